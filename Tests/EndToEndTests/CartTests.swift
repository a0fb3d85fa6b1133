// The cart example: item fields, numbers included, come back exactly as sent.
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("cart, end to end", .timeLimit(.minutes(5)))
struct CartTests {
    @Test("numbers keep their exact text through worker, database and back")
    func exactNumbers() async throws {
        let database = try await TestDatabase.createDatabase()
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", GatewayProcess.repositoryRoot + "/functions"],
                environment: ["DATABASE_URL": database])
            let client = gateway.client()
            let item = #"{"sku":"rose","qty":1,"price":99.99,"ref":9007199254740993}"#
            let added = try client.request("POST", "/v1/cart/bob/add", body: item)
            #expect(added.status == 200)
            let cart = try client.request("GET", "/v1/cart/bob/get")
            #expect(cart.status == 200)
            // The database may reorder keys, but never touch a number's text.
            #expect(cart.text.contains(#""price":99.99"#), "got \(cart.text)")
            #expect(cart.text.contains(#""ref":9007199254740993"#), "got \(cart.text)")
            let items = try JSONValue.parse(cart.text, limits: .client)["items"]?.arrayValue ?? []
            #expect(items.count == 1)
            let expected = try JSONValue.parse(item, limits: .client).objectValue!
            #expect(items.first?.objectValue.map { Dictionary(uniqueKeysWithValues: $0.pairs.map { ($0.key, $0.value) }) }
                == Dictionary(uniqueKeysWithValues: expected.pairs.map { ($0.key, $0.value) }))
            let removed = try client.request("POST", "/v1/cart/bob/remove", body: #"{"sku":"rose"}"#)
            #expect(removed.status == 200)
            #expect(try client.request("GET", "/v1/cart/bob/get").text.contains("rose") == false)
            #expect(gateway.stop() == 0)
        }
    }
}
