#include "CSwitchyardCLI.h"

#include <stdio.h>

void sy_flush_stdout(void) { fflush(stdout); }
