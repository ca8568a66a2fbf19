import Messaging
import Metrics
import MetricsTestKit
import Synchronization
import Testing

@Suite("MeteredCount and MeteredSlots (no sockets)")
struct MeteredTests {
    @Test("a count reaches its snapshot value and its swift-metrics counter alike")
    func countIsKeptTwice() throws {
        let metrics = TestMetrics()
        let count = MeteredCount("test_things_total", dimensions: [("service", "test")], factory: metrics)
        #expect(count.value == 0)
        count.add()
        count.add(41)
        #expect(count.value == 42)
        let counter = try metrics.expectCounter("test_things_total", [("service", "test")])
        #expect(counter.totalValue == 42)
    }

    @Test("slots are refused at the limit and free again once released; a refusal takes nothing")
    func slotsHoldTheirLimit() {
        let slots = MeteredSlots("test_slots")
        #expect(slots.take(limit: 2))
        #expect(slots.take(limit: 2))
        #expect(!slots.take(limit: 2))
        #expect(slots.value == 2)
        slots.release()
        #expect(slots.value == 1)
        #expect(slots.take(limit: 2))
        #expect(!slots.take(limit: 2))
        slots.release()
        slots.release()
        #expect(slots.value == 0)
    }

    @Test("many threads taking and releasing never pass the limit", .timeLimit(.minutes(1)))
    func slotsUnderContention() async {
        let slots = MeteredSlots("test_contended_slots")
        let held = Tally()  // slots granted and not yet released
        let overshoots = Tally()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    for _ in 0..<10_000 where slots.take(limit: 3) {
                        if held.n.wrappingAdd(1, ordering: .relaxed).newValue > 3 {
                            overshoots.n.wrappingAdd(1, ordering: .relaxed)
                        }
                        held.n.wrappingSubtract(1, ordering: .relaxed)
                        slots.release()
                    }
                }
            }
        }
        #expect(slots.value == 0)
        #expect(overshoots.n.load(ordering: .relaxed) == 0)
    }
}

private final class Tally: Sendable {
    let n = Atomic<Int>(0)
}
