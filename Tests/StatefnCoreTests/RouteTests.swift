// The v1 URL grammar: what a client's path turns into, or which status it gets.
@testable import StatefnCore
import Testing

@Suite("routes", .timeLimit(.minutes(1)))
struct RouteTests {
    @Test func commandsQueriesActionsAndRawState() throws {
        #expect(try Route.parse(method: "POST", path: "/v1/counter/alice/increment")
            == .command(function: "counter", entity: "alice", command: "increment", readonly: false))
        #expect(try Route.parse(method: "GET", path: "/v1/counter/alice/get")
            == .command(function: "counter", entity: "alice", command: "get", readonly: true))
        #expect(try Route.parse(method: "POST", path: "/v1/echo/say") == .action(function: "echo", command: "say"))
        #expect(try Route.parse(method: "GET", path: "/v1/counter/alice") == .rawState(function: "counter", entity: "alice"))
        #expect(try Route.parse(method: "GET", path: "/healthz") == .healthz)
        #expect(try Route.parse(method: "HEAD", path: "/readyz") == .readyz)
        #expect(try Route.parse(method: "GET", path: "/v1/functions") == .functions)
    }

    @Test func entityIdsArePercentDecoded() throws {
        #expect(try Route.parse(method: "POST", path: "/v1/cart/bob%20smith/add")
            == .command(function: "cart", entity: "bob smith", command: "add", readonly: false))
        #expect(try Route.parse(method: "POST", path: "/v1/cart/%C3%A9l%C3%A8ve/add")
            == .command(function: "cart", entity: "élève", command: "add", readonly: false))
        #expect(
            try Route.parse(method: "POST", path: "/v1/cart/élève/add")
                == .command(function: "cart", entity: "élève", command: "add", readonly: false),
            "raw UTF-8 is taken as is")
        #expect(try Route.parse(method: "GET", path: "/v1/cart/a%2525") == .rawState(function: "cart", entity: "a%25"))
    }

    @Test(arguments: [
        ("POST", "/v1/Counter/a/inc", 400),  // upper case function
        ("POST", "/v1/counter/a/1inc", 400),  // command must start with a letter
        ("POST", "/v1/counter/a%2Fb/inc", 400),  // '/' inside an id
        ("POST", "/v1/counter/a%0Ab/inc", 400),  // control character
        ("POST", "/v1/counter/a%7Fb/inc", 400),  // DEL, the ASCII control above the others
        ("POST", "/v1/counter/a%00b/inc", 400),  // NUL
        ("POST", "/v1/counter/a\u{202E}b/inc", 400),  // a bidi override, unescaped
        ("POST", "/v1/counter/a%E2%80%8Bb/inc", 400),  // a zero-width space, escaped
        ("POST", "/v1/counter/%ZZ/inc", 400),  // bad escape
        ("POST", "/v1/counter/%FF/inc", 400),  // not UTF-8
        ("POST", "/v1/counter/a/events", 405),  // the event log is GET only
        ("POST", "/v1/functions/a/x", 404),  // reserved function
        ("GET", "/v2/counter/a/x", 404),
        ("GET", "/v1/counter//x", 404),
        ("GET", "/v1/a/b/c/d", 404),
        ("GET", "/v1/a/b/c/d/e/f", 404),
        ("GET", "/v1/", 404),
        ("GET", "/v1", 404),
        ("GET", "/v1/counter/a/", 404),  // a trailing slash is an empty segment
        ("PUT", "/v1/counter/a/inc", 405),
        ("POST", "/healthz", 405),
        ("POST", "/v1/functions", 405),
    ])
    func refusals(method: String, path: String, status: Int) {
        #expect(throws: RouteError.self) { try Route.parse(method: method, path: path) }
        do {
            _ = try Route.parse(method: method, path: path)
        } catch {
            #expect(error.status == status, "\(method) \(path)")
            if status == 405 { #expect(!error.allow.isEmpty) }
        }
    }

    @Test func entityLength() throws {
        let longest = String(repeating: "a", count: 256)
        _ = try Route.parse(method: "GET", path: "/v1/f/\(longest)")
        #expect(throws: RouteError.self) { try Route.parse(method: "GET", path: "/v1/f/\(longest)a") }
        #expect(Route.isFunctionName("a" + String(repeating: "b", count: 62)))
        #expect(!Route.isFunctionName("a" + String(repeating: "b", count: 63)))
    }
}
