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

    @Test func accountKeepsItsBalanceAndTakesSagaStepsOnlyFromTransfers() async throws {
        try await withPool { pool in
            let account = example("account")
            let alice: JSONValue = ["sub": "alice", "scopes": ["invoke:account/*"]]
            let saga: JSONValue = ["sub": "fn:transfer/t1", "scopes": ["invoke:account/*"]]
            let call = Caller(pool: pool, definition: account, entity: "alice")

            let opened = try await call("1", "open", ["balance": 100], principal: alice)
            let hundred: JSONValue = ["balance": 100, "open": true]
            #expect(opened["reply"] == hundred)
            #expect(opened["state"] == hundred)
            #expect(opened["events"] == [["type": "opened", "balance": 100]])
            let twice = try await call("2", "open", ["balance": 5], state: hundred, principal: alice)
            #expect(twice["error"]?["status"] == 409)
            #expect(twice["error"]?["code"] == "already_open")
            for payload: JSONValue in [["balance": -5], ["balance": true], ["balance": 1.5], nil] {
                let bad = try await call("3", "open", payload, principal: alice)
                #expect(bad["error"]?["status"] == 400, "payload \(payload)")
                #expect(bad["state"] == nil)
            }
            let read = try await call("4", "get", state: hundred, readonly: true, principal: alice)
            #expect(read["reply"] == hundred)
            #expect(read["state"] == nil)
            let never = try await call("5", "get", readonly: true, principal: alice)
            #expect(never["error"]?["status"] == 404)
            #expect(never["error"]?["code"] == "no_account")

            // A debit it cannot cover changes nothing and tells the transfer, never answering an error.
            let refused = try await call(
                "6", "debit", ["amount": 150, "transfer": "t1"], state: hundred, principal: saga)
            #expect(refused["error"] == nil)
            #expect(refused["state"] == nil)
            let toldRefused: JSONValue = [
                [
                    "function": "transfer", "entity": "t1", "command": "debit_refused",
                    "payload": ["reason": "insufficient_funds"],
                ]
            ]
            #expect(refused["effects"] == toldRefused)

            let debited = try await call(
                "7", "debit", ["amount": 30, "transfer": "t1"], state: hundred, principal: saga)
            let seventy: JSONValue = ["balance": 70, "open": true]
            #expect(debited["state"] == seventy)
            #expect(debited["events"] == [["type": "debited", "amount": 30, "transfer": "t1"]])
            let toldDebited: JSONValue = [
                ["function": "transfer", "entity": "t1", "command": "debited", "payload": ["amount": 30]]
            ]
            #expect(debited["effects"] == toldDebited)

            // Saga steps come only from the transfer function's effects.
            let outsiders: [JSONValue] = [alice, ["sub": "fn:account/bob", "scopes": []], nil]
            for outsider in outsiders {
                let forbidden = try await call(
                    "8", "debit", ["amount": 30, "transfer": "t1"], state: hundred, principal: outsider)
                #expect(forbidden["error"]?["status"] == 403, "principal \(outsider)")
                #expect(forbidden["error"]?["code"] == "internal_command")
                #expect(forbidden["state"] == nil)
            }

            let closed = try await call("9", "close", state: seventy, principal: alice)
            let closedSeventy: JSONValue = ["balance": 70, "open": false]
            #expect(closed["reply"] == closedSeventy)
            #expect(closed["state"] == closedSeventy)
            let noCredit = try await call(
                "10", "credit", ["amount": 10, "transfer": "t1"], state: closedSeventy, principal: saga)
            #expect(noCredit["state"] == nil)
            #expect(noCredit["effects"]?.arrayValue?.first?["command"] == "credit_refused")
            #expect(noCredit["effects"]?.arrayValue?.first?["payload"] == ["reason": "account_closed"])
            // A refund lands even on a closed account: money is never destroyed.
            let refunded = try await call(
                "11", "refund", ["amount": 10, "transfer": "t1"], state: closedSeventy, principal: saga)
            #expect(refunded["state"] == ["balance": 80, "open": false])
            #expect(refunded["effects"]?.arrayValue?.first?["command"] == "refunded")
            let missing = try await call("12", "close", principal: alice)
            #expect(missing["error"]?["status"] == 404)
        }
    }

    @Test func transferRunsItsSagaThroughEffects() async throws {
        try await withPool { pool in
            let transfer = example("transfer")
            let client: JSONValue = ["sub": "alice", "scopes": ["invoke:transfer/*"]]
            let fromAlice: JSONValue = ["sub": "fn:account/alice", "scopes": ["invoke:transfer/*"]]
            let fromBob: JSONValue = ["sub": "fn:account/bob", "scopes": ["invoke:transfer/*"]]
            let call = Caller(pool: pool, definition: transfer, entity: "t1")
            let parameters: JSONValue = ["from": "alice", "to": "bob", "amount": 30]

            let started = try await call("1", "start", parameters, principal: client)
            #expect(started["reply"] == ["status": "debiting"])
            #expect(started["state"] == ["from": "alice", "to": "bob", "amount": 30, "status": "debiting"])
            let debit: JSONValue = [
                [
                    "function": "account", "entity": "alice", "command": "debit",
                    "payload": ["amount": 30, "transfer": "t1"],
                ]
            ]
            #expect(started["effects"] == debit)
            let debiting = try #require(started["state"])

            // Starting it again answers its status and sends nothing; other parameters are a conflict.
            let again = try await call("2", "start", parameters, state: debiting, principal: client)
            #expect(again["reply"] == ["status": "debiting"])
            #expect(again["state"] == nil)
            #expect(again["effects"] == nil)
            let other = try await call(
                "3", "start", ["from": "alice", "to": "bob", "amount": 31], state: debiting, principal: client)
            #expect(other["error"]?["status"] == 409)
            #expect(other["error"]?["code"] == "transfer_exists")
            let bads: [JSONValue] = [
                ["from": "alice", "to": "alice", "amount": 1], ["from": "alice", "to": "bob", "amount": 0],
                ["from": "alice", "to": "bob", "amount": true], ["from": "", "to": "bob", "amount": 1], nil,
            ]
            for payload in bads {
                let bad = try await call("4", "start", payload, principal: client)
                #expect(bad["error"]?["status"] == 400, "payload \(payload)")
            }
            // Only alice (or an admin) moves alice's money, though the debit runs with transfer's own scopes.
            let mallory: JSONValue = ["sub": "mallory", "scopes": ["invoke:transfer/*"]]
            let stolen = try await call("4b", "start", parameters, principal: mallory)
            #expect(stolen["error"]?["status"] == 403 && stolen["effects"] == nil)
            #expect(stolen["error"]?["code"] == "not_your_account")
            let admin: JSONValue = ["sub": "ops", "scopes": ["admin:*"]]
            #expect(try await call("4c", "start", parameters, principal: admin)["reply"] == ["status": "debiting"])
            let forbidden = try await call("5", "debited", ["amount": 30], state: debiting, principal: client)
            #expect(forbidden["error"]?["status"] == 403)
            #expect(forbidden["error"]?["code"] == "internal_command")

            let debited = try await call("6", "debited", ["amount": 30], state: debiting, principal: fromAlice)
            #expect(debited["reply"] == ["status": "crediting"])
            #expect(debited["events"] == [["type": "status", "status": "crediting"]])
            let credit: JSONValue = [
                [
                    "function": "account", "entity": "bob", "command": "credit",
                    "payload": ["amount": 30, "transfer": "t1"],
                ]
            ]
            #expect(debited["effects"] == credit)
            let crediting = try #require(debited["state"])
            #expect(crediting["status"] == "crediting")
            // A repeated step finds the transfer past it and moves nothing.
            let repeated = try await call("7", "debited", ["amount": 30], state: crediting, principal: fromAlice)
            #expect(repeated["reply"] == ["status": "crediting"])
            #expect(repeated["state"] == nil)
            #expect(repeated["effects"] == nil)

            let creditRefused = try await call(
                "8", "credit_refused", ["reason": "account_closed"], state: crediting, principal: fromBob)
            #expect(creditRefused["reply"] == ["status": "compensating"])
            let refund: JSONValue = [
                [
                    "function": "account", "entity": "alice", "command": "refund",
                    "payload": ["amount": 30, "transfer": "t1"],
                ]
            ]
            #expect(creditRefused["effects"] == refund)
            let compensating = try #require(creditRefused["state"])

            let refunded = try await call("9", "refunded", ["amount": 30], state: compensating, principal: fromAlice)
            #expect(refunded["reply"] == ["status": "compensated"])
            #expect(refunded["state"]?["status"] == "compensated")
            #expect(refunded["effects"] == nil)
            let read = try await call("10", "get", state: refunded["state"]!, readonly: true, principal: client)
            #expect(read["reply"] == ["status": "compensated", "from": "alice", "to": "bob", "amount": 30])
            #expect(read["state"] == nil)

            // A refused debit rejects the transfer and keeps the reason.
            let rejected = try await call(
                "11", "debit_refused", ["reason": "insufficient_funds"], state: debiting, principal: fromAlice)
            #expect(rejected["reply"] == ["status": "rejected"])
            #expect(rejected["effects"] == nil)
            let shown = try await call("12", "get", state: rejected["state"]!, readonly: true, principal: client)
            let rejectedView: JSONValue = [
                "status": "rejected", "from": "alice", "to": "bob", "amount": 30, "reason": "insufficient_funds",
            ]
            #expect(shown["reply"] == rejectedView)
            let never = try await call("13", "get", readonly: true, principal: client)
            #expect(never["error"]?["code"] == "no_transfer")
        }
    }
}

/// Calls one example function on one entity through the pool, as the gateway would, with the principal given.
private struct Caller {
    let pool: WorkerPool
    let definition: FunctionDefinition
    let entity: String

    func callAsFunction(
        _ id: String, _ command: String, _ payload: JSONValue = nil, state: JSONValue = nil, readonly: Bool = false,
        principal: JSONValue
    ) async throws -> JSONValue {
        try await pool.invoke(
            definition,
            request: request(
                id, function: definition.name, entity: entity, command: command, payload: payload, state: state,
                readonly: readonly, principal: principal))
    }
}
