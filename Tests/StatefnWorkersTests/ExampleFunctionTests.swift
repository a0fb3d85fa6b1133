// The example functions in functions/ answer as their use cases promise, through the real worker pool.
import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(2))) struct ExampleFunctionTests {
    @Test func counterIncrementsAndReads() async throws {
        try await withPool { pool in
            let counter = example("counter")
            let first = try await pool.invoke(counter, request: request("1", command: "increment", payload: ["by": 5]))
            #expect(first["reply"] == ["value": 5])
            #expect(first["state"] == ["value": 5])
            let second = try await pool.invoke(
                counter, request: request("2", command: "increment", payload: nil, state: ["value": 5]))
            #expect(second["reply"] == ["value": 6])
            let read = try await pool.invoke(
                counter, request: request("3", command: "get", state: ["value": 6], readonly: true))
            #expect(read["reply"] == ["value": 6])
            #expect(read["state"] == nil)
        }
    }

    @Test func theSDKAlsoServesForkMode() async throws {
        try await withPool { pool in
            var counter = example("counter")
            counter.manifest.mode = .fork
            let answer = try await pool.invoke(
                counter, request: request("1", command: "increment", payload: ["by": 2], state: ["value": 40]))
            #expect(answer["reply"] == ["value": 42])
        }
    }

    @Test func counterRefusesBadInput() async throws {
        try await withPool { pool in
            let counter = example("counter")
            let unknown = try await pool.invoke(counter, request: request("1", command: "decrement"))
            #expect(unknown["error"]?["status"] == 400)
            #expect(unknown["error"]?["code"] == "unknown_command")
            for payload: JSONValue in [["by": "two"], ["by": 1.5], ["by": true], [1, 2]] {
                let bad = try await pool.invoke(counter, request: request("2", command: "increment", payload: payload))
                #expect(bad["error"]?["status"] == 400, "payload \(payload)")
                #expect(bad["state"] == nil)
            }
        }
    }

    @Test func cartKeepsItemsExactly() async throws {
        try await withPool { pool in
            let cart = example("cart")
            let rose: JSONValue = [
                "sku": "rose", "qty": 2, "price": 99.99, "serial": .integer(9_007_199_254_740_993), "note": "red ✿",
            ]
            let added = try await pool.invoke(cart, request: request("1", command: "add", payload: rose))
            #expect(added["state"] == ["items": [rose]])
            #expect(added["events"] == [["type": "added", "sku": "rose", "qty": 2]])

            let more = try await pool.invoke(
                cart, request: request("2", command: "add", payload: ["sku": "rose", "qty": 3], state: added["state"]!))
            #expect(more["state"]?["items"]?.arrayValue?.first?["qty"] == 5)
            #expect(more["state"]?["items"]?.arrayValue?.first?["price"] == 99.99)
            #expect(more["state"]?["items"]?.arrayValue?.first?["serial"] == .integer(9_007_199_254_740_993))

            let tulip: JSONValue = ["sku": "tulip", "qty": 1, "price": 0.1]
            let two = try await pool.invoke(
                cart, request: request("3", command: "add", payload: tulip, state: more["state"]!))
            let removed = try await pool.invoke(
                cart, request: request("4", command: "remove", payload: ["sku": "rose"], state: two["state"]!))
            #expect(removed["state"] == ["items": [tulip]])
            #expect(removed["events"] == [["type": "removed", "sku": "rose"]])

            let listed = try await pool.invoke(
                cart, request: request("5", command: "get", state: removed["state"]!, readonly: true))
            #expect(listed["reply"] == ["items": [tulip]])
            #expect(listed["state"] == nil)

            let missing = try await pool.invoke(
                cart, request: request("6", command: "remove", payload: ["sku": "lily"], state: removed["state"]!))
            #expect(missing["error"]?["status"] == 404)
            let bad = try await pool.invoke(cart, request: request("7", command: "add", payload: ["qty": 1]))
            #expect(bad["error"]?["status"] == 400)
        }
    }

    @Test func voteTalliesInForkMode() async throws {
        try await withPool { pool in
            let vote = example("vote")
            #expect(vote.manifest.mode == .fork)
            #expect(vote.executable.hasSuffix("/vote/handler"))
            let first = try await pool.invoke(vote, request: request("1", command: "cast", payload: ["choice": "red"]))
            #expect(first["reply"] == ["tally": ["red": 1]])
            #expect(first["events"] == [["choice": "red", "type": "voted"]])
            let second = try await pool.invoke(
                vote, request: request("2", command: "cast", payload: ["choice": "red"], state: first["state"]!))
            let third = try await pool.invoke(
                vote, request: request("3", command: "cast", payload: ["choice": "blue"], state: second["state"]!))
            #expect(third["state"] == ["tally": ["blue": 1, "red": 2]])
            let tally = try await pool.invoke(vote, request: request("4", command: "tally", state: third["state"]!))
            #expect(tally["reply"] == ["tally": ["blue": 1, "red": 2]])
            #expect(tally["state"] == nil)
            let bad = try await pool.invoke(vote, request: request("5", command: "cast", payload: ["choice": ""]))
            #expect(bad["error"]?["status"] == 400)
            let unknown = try await pool.invoke(vote, request: request("6", command: "shout"))
            #expect(unknown["error"]?["code"] == "unknown_command")
        }
    }
}
