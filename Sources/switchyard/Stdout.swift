#if canImport(Glibc)
import Glibc
#endif

func fflushStdout() { fflush(nil) }
