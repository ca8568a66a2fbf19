import LarsProtocol
import LoadBalancing
@testable import NameService
import Reactor
import RouteStore
import Testing

/// A regional name service's rules without sockets: routes it has no hosts for are asked of its parent.
@Suite("NameServiceCore: a parent name service")
struct ParentCoreTests {
    let a = RouteKey(modid: 1, cmdid: 1)
    let b = RouteKey(modid: 1, cmdid: 2)
    let h1 = Host(address: "10.0.0.1", port: 1)!
    let h2 = Host(address: "10.0.0.2", port: 2)!
    let support = NameServiceCoreTests()

    func core(maxChainHops: Int = 8) -> NameServiceCore {
        var configuration = NameServiceConfiguration()
        configuration.parent = ClientEndpoint(host: "10.9.0.1", port: 7778)
        configuration.maxChainHops = maxChainHops
        return NameServiceCore(limits: NameServiceCore.Limits(configuration))
    }

    @Test("a route without rows is asked of the parent once; its answer is served and pushed; own rows win")
    func inheritsFromParent() throws {
        var core = core()
        let first = core.getRoute(a, from: 1)
        #expect(first.contains(.askParent(a, hops: 1)))
        #expect(try support.replyHosts(first, to: 1) == [], "answered now with what is held: nothing yet")
        #expect(!core.getRoute(a, from: 2).contains(.askParent(a, hops: 1)), "asked once")

        let answered = core.parentAnswered(a, hosts: [h2, h1], loads: [:])
        #expect(support.pushes(answered) == ["1 1/1", "2 1/1"])
        #expect(core.snapshot.hosts(for: a) == [h1, h2])
        #expect(try support.replyHosts(core.getRoute(a, from: 3), to: 3) == [h1, h2])
        #expect(core.parentAnswered(a, hosts: [h1, h2], loads: [:]).isEmpty, "the same answer: nothing pushed")

        // Rows of its own for the route: they win, and are pushed.
        let own = support.load(&core, version: 1, [RouteEntry(key: a, host: h2)])
        #expect(support.pushes(own).contains("1 1/1"))
        #expect(core.snapshot.hosts(for: a) == [h2])
        #expect(core.parentAnswered(a, hosts: [h1], loads: [:]).isEmpty, "the parent's change is not served")
        // Its rows gone: the parent's route is served again.
        _ = support.load(&core, version: 2, [])
        #expect(core.snapshot.hosts(for: a) == [h1])
    }

    @Test("a route with rows here is not asked of the parent; an answer nobody asked for is ignored")
    func ownRoutesNotAsked() throws {
        var core = core()
        _ = support.load(&core, version: 1, [RouteEntry(key: a, host: h1)])
        #expect(!core.getRoute(a, from: 1).contains(where: { if case .askParent = $0 { true } else { false } }))
        #expect(core.parentAnswered(b, hosts: [h2], loads: [:]).isEmpty)
        #expect(core.snapshot.hosts(for: b).isEmpty)
    }

    @Test("a request that came through the most name services is not passed on (logged once); a reconnect asks again")
    func hopLimit() throws {
        var core = core(maxChainHops: 3)
        let atLimit = core.getRoute(a, from: 1, hops: 3)
        #expect(atLimit.contains(.log(.notAskedOfParent(a, hops: 3))))
        #expect(!atLimit.contains(.askParent(a, hops: 4)))
        #expect(!core.getRoute(a, from: 2, hops: 3).contains(.log(.notAskedOfParent(a, hops: 3))), "once")
        #expect(core.getRoute(b, from: 1, hops: 2).contains(.askParent(b, hops: 3)))
        #expect(core.parentConnected() == [.askParent(b, hops: 3)])
    }

    @Test("a parent's loads are served with its hosts")
    func parentLoads() throws {
        var core = core()
        _ = core.getRoute(a, from: 1)
        _ = core.parentAnswered(a, hosts: [h1], loads: [h1: HostLoad(load: 5, capacity: 5)])
        let (body, _) = core.servedBody(for: a)
        #expect(try support.loads(body) == [h1: HostLoad(load: 5, capacity: 5)])
    }
}
