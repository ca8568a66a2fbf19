import CSwitchyardCLI

/// Flushes standard output only (flushing every stream would wait on a thread blocked reading stdin).
func fflushStdout() { sy_flush_stdout() }
