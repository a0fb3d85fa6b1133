// Scope parsing and matching: the rules that decide who may touch which entity.
import StatefnAuth
import Testing

@Suite("scopes", .timeLimit(.minutes(1)))
struct ScopeTests {
    @Test("parses every documented form and prints it back")
    func parses() {
        for text in [
            "invoke:cart", "read:*", "admin:*", "invoke:cart/alice", "invoke:cart/{sub}", "read:cart/user-*",
            "invoke:*/x", "read:cart/*",
        ] {
            #expect(Scope(text)?.description == text, "\(text)")
        }
        #expect(Scope("invoke:cart/{sub}")?.entity == .subject)
        #expect(Scope("read:cart/user-*")?.entity == .prefix("user-"))
        #expect(Scope("admin:*")?.function == .any)
    }

    @Test(
        "refuses what is not a scope",
        arguments: [
            "", "invoke", "write:cart", "Invoke:cart", "invoke:", "invoke:Cart", "invoke:cart/", "offline_access",
            "invoke:9cart", "invoke:cart/a\u{1}b",
        ])
    func refuses(_ text: String) {
        #expect(Scope(text) == nil)
    }

    @Test("names compare by bytes: {sub}, exact ids and prefixes never match a canonically equivalent spelling")
    func bytesNotCanonicalEquivalence() {
        let kelvin = "\u{212A}ate"  // KELVIN SIGN, canonically equivalent to "Kate"
        #expect(kelvin == "Kate", "the trap this test is about: Swift's == says these are equal")
        let sub = Scope("invoke:cart/{sub}")!
        #expect(sub.covers(action: .invoke, function: "cart", entity: kelvin, subject: kelvin))
        #expect(!sub.covers(action: .invoke, function: "cart", entity: "Kate", subject: kelvin))
        #expect(!sub.covers(action: .invoke, function: "cart", entity: kelvin, subject: "Kate"))
        let exact = Scope("invoke:cart/caf\u{E9}")!
        #expect(exact.covers(action: .invoke, function: "cart", entity: "caf\u{E9}", subject: ""))
        #expect(!exact.covers(action: .invoke, function: "cart", entity: "cafe\u{301}", subject: ""))
        let prefix = Scope("read:cart/caf\u{E9}-*")!
        #expect(prefix.covers(action: .read, function: "cart", entity: "caf\u{E9}-1", subject: ""))
        #expect(!prefix.covers(action: .read, function: "cart", entity: "cafe\u{301}-1", subject: ""))
    }

    @Test("{sub}: alice reaches cart/alice but not cart/bob")
    func subject() {
        let alice = Principal(subject: "alice", scopes: ["invoke:cart/{sub}"])
        #expect(alice.permits(.invoke, function: "cart", entity: "alice"))
        #expect(!alice.permits(.invoke, function: "cart", entity: "bob"))
        #expect(!alice.permits(.invoke, function: "counter", entity: "alice"))
        #expect(!alice.permits(.read, function: "cart", entity: "alice"), "invoke does not cover raw state")
        #expect(!alice.permits(.invoke, function: "cart", entity: nil), "an entity-bound scope does not cover actions")
        let nobody = Principal(subject: "", scopes: ["invoke:cart/{sub}"])
        #expect(!nobody.permits(.invoke, function: "cart", entity: ""))
    }

    @Test("actions: admin covers all, invoke and read cover their own")
    func actions() {
        let admin = Principal(subject: "ops", scopes: ["admin:*"])
        for action in ScopeAction.allCases {
            #expect(admin.permits(action, function: "cart", entity: "x"))
        }
        #expect(admin.permits(.admin, function: nil, entity: nil), "admin:* covers /v1/functions")
        let cartAdmin = Principal(subject: "ops", scopes: ["admin:cart"])
        #expect(cartAdmin.permits(.read, function: "cart", entity: "x"))
        #expect(!cartAdmin.permits(.admin, function: nil, entity: nil), "admin:cart does not cover /v1/functions")
        let reader = Principal(subject: "r", scopes: ["read:*"])
        #expect(reader.permits(.read, function: "cart", entity: "x"))
        #expect(!reader.permits(.invoke, function: "cart", entity: "x"))
    }

    @Test("exact ids and prefixes")
    func entities() {
        let p = Principal(subject: "s", scopes: ["invoke:cart/alice", "invoke:vote/poll-*", "read:counter/*"])
        #expect(p.permits(.invoke, function: "cart", entity: "alice"))
        #expect(!p.permits(.invoke, function: "cart", entity: "alice2"))
        #expect(p.permits(.invoke, function: "vote", entity: "poll-1"))
        #expect(!p.permits(.invoke, function: "vote", entity: "pol"))
        #expect(p.permits(.read, function: "counter", entity: "anything"))
        #expect(!p.permits(.read, function: "counter", entity: nil), "a listing needs an unrestricted scope")
    }

    @Test("unknown scopes are kept for the worker but grant nothing")
    func unknownScopes() {
        let p = Principal(subject: "s", scopes: ["offline_access", "invoke:cart"])
        #expect(p.scopes == ["offline_access", "invoke:cart"])
        #expect(p.parsedScopes.count == 1)
        #expect(p.json == ["sub": "s", "scopes": ["offline_access", "invoke:cart"]])
    }
}
