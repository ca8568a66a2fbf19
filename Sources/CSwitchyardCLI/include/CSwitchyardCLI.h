#ifndef C_SWITCHYARD_CLI_H
#define C_SWITCHYARD_CLI_H

/* What the `switchyard` command line needs from C and the reactor does not. */

/// fflush(stdout) (the stream itself is not visible to Swift 6 code: a mutable global).
void sy_flush_stdout(void);

#endif
