// A worker's answer line: what is committed, what passes through, and what is the worker's fault (502).
@testable import StatefnCore
import StatefnJSON
import Testing

@Suite("worker answers", .timeLimit(.minutes(1)))
struct WorkerAnswerTests {
    @Test func stateEventsAndEffects() throws {
        let answer = try WorkerAnswer([
            "id": "r1", "reply": ["ok": true], "state": ["n": 1], "events": [["type": "added"]],
            "effects": [["function": "inventory", "entity": "rose", "command": "reserve", "payload": ["qty": 2], "delay_ms": 50]],
        ])
        #expect(answer.reply == ["ok": true])
        guard case .replace(let state) = answer.change else { Issue.record("expected a new state"); return }
        #expect(state == ["n": 1])
        #expect(answer.events == [["type": "added"]])
        #expect(answer.effects.first?.function == "inventory")
        #expect(answer.effects.first?.delayMs == 50)
        #expect(answer.changesAnything)
    }

    @Test func missingStateMeansUnchangedAndReplyDefaultsToNull() throws {
        let answer = try WorkerAnswer(["id": "r1"])
        #expect(answer.reply == .null)
        guard case .unchanged = answer.change else { Issue.record("expected no change"); return }
        #expect(!answer.changesAnything)
        guard case .delete = try WorkerAnswer(["id": "r1", "delete": true]).change else {
            Issue.record("expected a delete")
            return
        }
    }

    @Test func businessErrorsPassThroughWithTheirStatus() {
        do {
            _ = try WorkerAnswer(["id": "r1", "error": ["status": 409, "code": "out_of_stock", "message": "no roses"]])
            Issue.record("expected an error")
        } catch {
            #expect(error.status == 409)
            #expect(error.detail == "no roses")
            #expect(error.code == "out_of_stock")
        }
    }

    @Test(arguments: [
        ["id": "r1", "error": ["status": 500, "message": "boom"]] as JSONValue,  // only 4xx may pass through
        ["id": "r1", "events": "nope"],
        ["id": "r1", "effects": [["command": "x"]]],
        ["id": "r1", "effects": [["function": "Bad Name", "command": "x"]]],
        ["id": "r1", "effects": [["function": "f", "command": "x", "delay_ms": -1]]],
        ["id": "r1", "delete": "yes"],
        [1, 2, 3],
    ])
    func protocolViolationsAre502(_ value: JSONValue) {
        do {
            _ = try WorkerAnswer(value)
            Issue.record("expected a protocol error")
        } catch {
            #expect(error.status == 502)
            #expect(error.logDetail != nil)
        }
    }
}
