// The pure parts of effects, timers and the event log: routes, how an effect's answer decides its row's fate, what
// an answer's effects and events may be, and the text forms the SQL and the API use.
import StatefnAuth
import StatefnJSON
import StatefnWorkers
import Testing

@testable import StatefnCore
import StatefnPostgres

@Suite("effects and events, pure parts", .timeLimit(.minutes(1)))
struct EffectsUnitTests {
    @Test func routes() throws {
        #expect(try Route.parse(method: "GET", path: "/v1/cart") == .list(function: "cart"))
        #expect(try Route.parse(method: "DELETE", path: "/v1/cart/bob") == .delete(function: "cart", entity: "bob"))
        #expect(try Route.parse(method: "GET", path: "/v1/cart/bob/events") == .events(function: "cart", entity: "bob"))
        #expect(try Route.parse(method: "GET", path: "/v1/outbox") == .outbox)
        let id = "0b9a4f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
        #expect(try Route.parse(method: "POST", path: "/v1/outbox/\(id)/retry") == .outboxRetry(id: id))
        for (method, path, status) in [
            ("POST", "/v1/cart/bob/events", 405), ("POST", "/v1/outbox", 405), ("GET", "/v1/outbox/x/retry", 405),
            ("POST", "/v1/cart", 405), ("PUT", "/v1/cart/bob", 405), ("POST", "/v1/outbox/a/b", 404),
        ] {
            #expect(throws: RouteError.self, "\(method) \(path)") { try Route.parse(method: method, path: path) }
            #expect((try? Route.parse(method: method, path: path)) == nil)
            do { _ = try Route.parse(method: method, path: path) } catch { #expect(error.status == status, "\(path)") }
        }
    }

    @Test("a 2xx is done; 5xx and the gateway's own 408, 409, 425 and 429 retry; other 4xx and refusals are dead")
    func outcomes() {
        #expect(EffectOutcome(status: 200, detail: "") == .done)
        for status in [500, 502, 503, 504, 408, 409, 425, 429] {
            guard case .retry(let why) = EffectOutcome(status: status, detail: "d") else {
                Issue.record("\(status) should be retried")
                continue
            }
            #expect(why == "\(status): d")
        }
        for status in [400, 401, 403, 404, 412, 413, 415, 422] {
            #expect(EffectOutcome(status: status, detail: "d") == .dead("\(status): d"))
        }
        // The function's own refusal is final whatever its status: a re-run would only replay it.
        for status in [409, 429, 400] {
            #expect(EffectOutcome(status: status, detail: "d", refusal: true) == .dead("\(status): d"))
        }
    }

    @Test("an effect's names, id and delay are checked before anything commits")
    func effectValidation() throws {
        func answer(_ effect: JSONValue) throws -> WorkerAnswer { try WorkerAnswer(["effects": [effect]]) }
        let ok = try answer(["function": "account", "entity": "a", "command": "debit", "delay_ms": 5])
        #expect(ok.effects.first?.delayMs == 5)
        let bad: [JSONValue] = [
            ["function": "Account", "command": "x"], ["function": "functions", "command": "x"],
            ["function": "outbox", "command": "x"], ["function": "a", "command": "1x"],
            ["function": "a", "command": "events"], ["function": "a", "entity": "a/b", "command": "x"],
            ["function": "a", "entity": "a\u{202E}b", "command": "x"], ["function": "a", "entity": "", "command": "x"],
            ["function": "a", "command": "x", "delay_ms": -1], ["function": "a", "command": "x", "delay_ms": 1.5],
            ["function": "a", "command": "x", "delay_ms": .integer(400_000_000_000)],
        ]
        for effect in bad {
            #expect(throws: GatewayError.self, "\(effect)") { try answer(effect) }
            do { _ = try answer(effect) } catch let error as GatewayError { #expect(error.status == 502) } catch { Issue.record("\(error)") }
        }
        let many = JSONValue.array(Array(repeating: ["type": "x"], count: 1001))
        #expect(throws: GatewayError.self) { try WorkerAnswer(["events": many]) }
    }

    @Test("a wake-up ends a wait at once, at a signalled due time, or at the timeout; it never fires early")
    func wakeUps() async {
        let clock = ContinuousClock()
        let wakeUp = WakeUp()
        var started = clock.now
        await wakeUp.wait(upTo: .milliseconds(100), clock: clock)
        #expect(clock.now - started >= .milliseconds(100), "no signal: the whole wait")
        started = clock.now
        let signaller = Task {
            try await Task.sleep(for: .milliseconds(20))
            wakeUp.signal()
        }
        await wakeUp.wait(upTo: .seconds(10), clock: clock)
        #expect(clock.now - started < .seconds(5), "a signal ends the wait")
        _ = try? await signaller.value
        started = clock.now
        wakeUp.signal(afterMs: 150)
        await wakeUp.wait(upTo: .seconds(10), clock: clock)
        let waited = clock.now - started
        #expect(waited >= .milliseconds(150) && waited < .seconds(5), "a due time ends the wait then: \(waited)")
        wakeUp.signal()
        started = clock.now
        await wakeUp.wait(upTo: .seconds(10), clock: clock)
        #expect(clock.now - started < .seconds(5), "a signal before the wait is kept for it")
    }

    @Test("the manifest's effect_scopes check agrees with the gateway's scope parser")
    func effectScopeGrammar() {
        let samples = [
            "invoke:account", "invoke:account/*", "invoke:*", "invoke:*/x", "invoke:t/t-*", "invoke:a/{sub}",
            "invoke:a/é", "invoke:", "invoke:A", "invoke:a/", "invoke:a b", "invoke:a/\u{7}", "invoke:a/b/c",
            "invoke:a/" + String(repeating: "x", count: 257), "invoke:a/" + String(repeating: "x", count: 256),
        ]
        for sample in samples {
            #expect(FunctionManifest.isEffectScope(sample) == (Scope(sample) != nil), "\(sample)")
        }
    }

    @Test func textForms() {
        #expect(Timestamp.rfc3339(ms: 0) == "1970-01-01T00:00:00.000Z")
        #expect(Timestamp.rfc3339(ms: 1_796_202_172_045) == "2026-12-02T09:02:52.045Z")
        #expect(PostgresArray.text(["a", #"b"c"#, #"d\e"#, "{,}", "é"]) == #"{"a","b\"c","d\\e","{,}","é"}"#)
        #expect(PostgresArray.text([]) == "{}")
        #expect(OutboxStore.isUUID("0b9a4f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b"))
        #expect(!OutboxStore.isUUID("0b9a4f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5"))
        #expect(!OutboxStore.isUUID("0b9a4f2e11c3d-4e5f-8a9b-0c1d2e3f4a5b"))
        #expect(!OutboxStore.isUUID("zb9a4f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b"))
    }

    @Test("an event's SSE frame: id, the event's own type when it is a safe name, and the list's object as data")
    func frames() {
        let key = EntityKey(function: "f", entity: "e")
        let event = StoredEvent(key: key, seq: 7, event: ["type": "added"], principal: .null, atMs: 0)
        #expect(String(decoding: event.frame, as: UTF8.self)
            == "id: 7\nevent: added\ndata: {\"seq\":7,\"event\":{\"type\":\"added\"},\"principal\":null,\"at\":\"1970-01-01T00:00:00.000Z\"}\n\n")
        let sneaky = StoredEvent(key: key, seq: 8, event: ["type": "a\ndata: x"], principal: .null, atMs: 0)
        #expect(String(decoding: sneaky.frame, as: UTF8.self).hasPrefix("id: 8\nevent: event\ndata: "))
    }
}
