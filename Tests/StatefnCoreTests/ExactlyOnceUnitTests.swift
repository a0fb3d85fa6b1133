// The pure parts of exactly once: entity keys by bytes, the Idempotency-Key grammar and fingerprint, the byte-bounded
// state cache, entity ids with format characters, and the SQL subset every migration must keep to.
import Foundation
@testable import StatefnCore
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("exactly once, pure parts", .timeLimit(.minutes(1)))
struct ExactlyOnceUnitTests {
    @Test("entity keys are equal and hashed by their UTF-8 bytes, as PostgreSQL compares them")
    func entityKeysByBytes() {
        let composed = EntityKey(function: "cart", entity: "caf\u{E9}")
        let decomposed = EntityKey(function: "cart", entity: "cafe\u{301}")
        #expect(composed.entity == decomposed.entity, "the trap: Swift's String == is canonical equivalence")
        #expect(composed != decomposed)
        let keys: Set<EntityKey> = [composed, decomposed, EntityKey(function: "cart", entity: "\u{212A}ate"),
                                    EntityKey(function: "cart", entity: "Kate")]
        #expect(keys.count == 4)
        #expect(EntityKey(function: "ab", entity: "c") != EntityKey(function: "a", entity: "bc"))
        // The same bytes in other storage (small and large strings, built or sliced) are the same key.
        let literal = EntityKey(function: "cart", entity: "an-entity-with-a-long-name-0001")
        let built = EntityKey(function: "ca" + "rt", entity: ["an-entity-with-", "a-long-name-0001"].joined())
        let sliced = EntityKey(
            function: String(decoding: [0x63, 0x61, 0x72, 0x74], as: UTF8.self),
            entity: String("/an-entity-with-a-long-name-0001/".dropFirst().dropLast()))
        #expect(literal == built && built == sliced)
        #expect(Set([literal, built, sliced]).count == 1)
        #expect(literal.hashValue == built.hashValue && built.hashValue == sliced.hashValue)
        #expect(EntityKey(function: "cart", entity: "") != EntityKey(function: "cart", entity: "a"))
    }

    @Test("JSON values are equal by bytes: a state whose strings or keys changed spelling has changed")
    func jsonEqualityByBytes() {
        #expect(JSONValue.string("caf\u{E9}") != .string("cafe\u{301}"))
        #expect(JSONValue.string("Kate") != .string("\u{212A}ate"))
        #expect(JSONValue.string("Kate") == .string("Kate"))
        let composed: JSONValue = ["caf\u{E9}": 1]
        let decomposed: JSONValue = ["cafe\u{301}": 1]
        #expect(composed != decomposed)
        #expect(composed["cafe\u{301}"] == nil, "a lookup by a canonically equivalent key finds nothing")
        #expect(Set([composed, decomposed, composed]).count == 2)
        #expect(JSONValue.array(["ab", "c"]) != .array(["a", "bc"]))
    }

    @Test("Idempotency-Key: a structured string or a bare token, 1 to 255 bytes")
    func keyGrammar() throws {
        #expect(try IdempotencyClaim.parse(header: nil) == nil)
        #expect(try IdempotencyClaim.parse(header: "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"") == "8e03978e-40d5-43e8-bc93-6894a57f9324")
        #expect(try IdempotencyClaim.parse(header: "op-1") == "op-1")
        #expect(try IdempotencyClaim.parse(header: "  op-1 ") == "op-1")
        #expect(try IdempotencyClaim.parse(header: #""a \"quoted\" \\ key""#) == #"a "quoted" \ key"#)
        #expect(try IdempotencyClaim.parse(header: String(repeating: "k", count: 255))?.utf8.count == 255)
        for bad in ["", "\"\"", "\"open", "\"a\" trailing", "two words", String(repeating: "k", count: 256),
                    "\"\\n\"", "caf\u{E9}", "\"caf\u{E9}\""] {
            #expect(throws: GatewayError.self, "\(bad)") { try IdempotencyClaim.parse(header: bad) }
        }
    }

    @Test("the fingerprint tells requests apart by command, If-Match and body bytes")
    func fingerprints() {
        let base = IdempotencyClaim.fingerprint(command: "add", ifMatch: nil, body: Array("{}".utf8))
        #expect(base.count == 64)
        #expect(base == IdempotencyClaim.fingerprint(command: "add", ifMatch: nil, body: Array("{}".utf8)))
        #expect(base != IdempotencyClaim.fingerprint(command: "remove", ifMatch: nil, body: Array("{}".utf8)))
        #expect(base != IdempotencyClaim.fingerprint(command: "add", ifMatch: "\"3\"", body: Array("{}".utf8)))
        #expect(base != IdempotencyClaim.fingerprint(command: "add", ifMatch: nil, body: Array("{ }".utf8)))
        #expect(base != IdempotencyClaim.fingerprint(command: "add\u{0}", ifMatch: nil, body: Array("}".utf8)))
    }

    @Test("the state cache holds to its byte budget and refuses one entry over a quarter of it")
    func cacheByBytes() {
        let cache = StateCache(capacity: 100_000, byteBudget: 1 << 20)
        let state = JSONValue.string(String(repeating: "x", count: 10_000))
        for index in 0..<1000 {
            cache.put(EntityKey(function: "f", entity: "e\(index)"), EntitySnapshot(state: state, version: 1), encodedBytes: 10_002)
            #expect(cache.usage.bytes <= 1 << 20)
        }
        #expect(cache.usage.entries > 10)
        let big = EntityKey(function: "f", entity: "big")
        cache.put(big, EntitySnapshot(state: state, version: 1), encodedBytes: 300_000)
        #expect(cache.get(big) == nil)
        let last = EntityKey(function: "f", entity: "e999")
        #expect(cache.get(last)?.version == 1, "the newest entry stays")
        cache.put(last, EntitySnapshot(state: .null, version: 2), encodedBytes: 4)
        #expect(cache.get(last)?.version == 2)
        let before = cache.usage.bytes
        cache.remove(last)
        #expect(cache.usage.bytes < before)
        let off = StateCache(capacity: 10, byteBudget: 0)
        off.put(last, .absent, encodedBytes: 4)
        #expect(off.get(last) == nil)
    }

    @Test("entity ids with Unicode format characters are refused", arguments: ["a\u{202E}b", "a\u{200B}", "\u{FEFF}x", "x\u{2066}"])
    func formatCharacters(_ id: String) {
        #expect(throws: RouteError.self) { try Route.validateEntity(id) }
    }

    @Test("every migration keeps to the SQL both PostgreSQL 15 and CockroachDB accept (DESIGN.md section 5)")
    func migrationsKeepToTheSubset() throws {
        let migrator = try Migrator(directory: GatewayProcess.repositoryRoot + "/migrations")
        #expect(migrator.migrations.count >= 2)
        // Phrases, on the statements with comments removed and whitespace collapsed.
        let forbidden = [
            "serial", "bigserial", "smallserial", "create sequence", "nextval", "create trigger", "create function",
            "create or replace function", "create procedure", "create extension", "pg_advisory", "listen ", "notify ",
            "do $$", "create rule", "inherits", "json ", "json,", "json)", "lock table",
        ]
        let allowedTypes: Set<String> = ["jsonb", "bigint", "text", "bytea", "timestamptz", "uuid", "boolean"]
        for migration in migrator.migrations {
            // Comments say what the SQL is for; only the statements count.
            let code = migration.sql.split(separator: "\n").map { line in
                line.range(of: "--").map { String(line[..<$0.lowerBound]) } ?? String(line)
            }.joined(separator: "\n").lowercased()
            let flat = " " + code.split(whereSeparator: \.isWhitespace).joined(separator: " ") + " "
            for phrase in forbidden { #expect(!flat.contains(phrase), "\(migration.name) uses \(phrase)") }
            // Column types: the word after each column name in CREATE TABLE bodies.
            for statement in code.components(separatedBy: "create table").dropFirst() {
                let table = statement.prefix(while: { $0 != ";" })
                guard let open = table.firstIndex(of: "("), let close = table.lastIndex(of: ")") else { continue }
                for column in table[table.index(after: open)..<close].split(separator: ",") {
                    let parts = column.split(whereSeparator: \.isWhitespace)
                    guard parts.count >= 2, parts[0] != "primary", !parts[0].hasPrefix("(") else { continue }
                    #expect(allowedTypes.contains(String(parts[1])), "\(migration.name): \(parts[0]) \(parts[1])")
                }
            }
        }
    }
}
