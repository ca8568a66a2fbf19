import ServiceLifecycle

extension ConnectionPool: Service {
    /// Runs the pool as a service of a `ServiceGroup`: it serves from its creation; `run()` waits for the group's
    /// graceful shutdown (or cancellation) and then closes the pool. Put it before the services that use it, so the
    /// group stops them first.
    public func run() async throws {
        try? await gracefulShutdown()
        await close()
    }
}
