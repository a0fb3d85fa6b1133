// Where the JWT verification keys come from: a JWKS file, a JWKS URL, or an OIDC issuer whose discovery document
// (`/.well-known/openid-configuration`) names the JWKS URL. Fetched off the request path, with a time limit.
import Foundation
import StatefnJSON

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

public enum JWKSLocation: Sendable, Equatable, CustomStringConvertible {
    case file(String)
    case url(String)
    case oidcIssuer(String)

    public var description: String {
        switch self {
        case .file(let path): "file \(path)"
        case .url(let url): "url \(url)"
        case .oidcIssuer(let issuer): "OIDC issuer \(issuer)"
        }
    }
}

extension JWKSLocation {
    /// Why keys may not be fetched from `url`, or nil: https only, plain http only to a loopback host (tests).
    /// The host is read the strict way: after any `user@`, up to the port; a bracketed IPv6 address may be followed
    /// by a port only.
    public static func fetchProblem(_ url: String) -> String? {
        let lower = url.lowercased()
        if lower.hasPrefix("https://") { return url.count > 8 ? nil : "no host in \(url)" }
        guard lower.hasPrefix("http://") else { return "must be an https URL, got \(url)" }
        let refusal = "must be an https URL (plain http is allowed to a loopback host only), got \(url)"
        let authority = url.dropFirst(7).prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let hostAndPort = authority.split(separator: "@", omittingEmptySubsequences: false).last ?? ""
        var host = hostAndPort.prefix { $0 != ":" }
        if hostAndPort.hasPrefix("[") {
            guard let close = hostAndPort.firstIndex(of: "]") else { return refusal }
            let port = hostAndPort[hostAndPort.index(after: close)...]
            guard port.isEmpty || (port.hasPrefix(":") && port.dropFirst().allSatisfy { $0.isASCII && $0.isNumber })
            else { return refusal }
            host = hostAndPort[...close]
        }
        return isLoopbackHost(String(host)) ? nil : refusal
    }

    /// `localhost`, or a literal address in 127.0.0.0/8 or ::1 (with or without IPv6 brackets); a name that only
    /// starts like one (`127.0.0.1.example.com`) is not. inet_pton(3).
    public static func isLoopbackHost(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        if bare.lowercased() == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, bare, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, bare, &v6) == 1 else { return false }
        return withUnsafeBytes(of: &v6) { bytes in bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1 }
    }
}

struct JWKSSource: Sendable {
    var location: JWKSLocation
    var timeoutSeconds: Double = 10

    /// The JWKS document's bytes (for an issuer, after discovery) and, for an issuer, the `issuer` it declares.
    func fetch() async throws -> (jwks: [UInt8], issuer: String?) {
        switch location {
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else {
                throw JWKSError("cannot read the JWKS file \(path)")
            }
            return (Array(data), nil)
        case .url(let url):
            return (try await get(url), nil)
        case .oidcIssuer(let issuer):
            let base = issuer.hasSuffix("/") ? String(issuer.dropLast()) : issuer
            let discovery = try JSONValue.parse(
                try await get(base + "/.well-known/openid-configuration"), limits: JSONLimits(maxBytes: 1 << 20))
            guard let jwksURI = discovery["jwks_uri"]?.stringValue else {
                throw JWKSError("the OIDC discovery document of \(issuer) has no jwks_uri")
            }
            return (try await get(jwksURI), discovery["issuer"]?.stringValue)
        }
    }

    /// The most a JWKS or discovery document may be.
    static let maxDocumentBytes = 1 << 20

    /// No cache, on disk or in memory (a rotated key must be seen at the next fetch), no redirect to where the
    /// keys may not come from (an https URL redirected to plain http), and a body read piece by piece, so that
    /// one over `maxDocumentBytes` is cut off as it arrives rather than downloaded whole.
    private static let fetches = CappedFetches(limit: maxDocumentBytes)
    private static let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.urlCache = nil
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        return URLSession(configuration: configuration, delegate: fetches, delegateQueue: nil)
    }()

    private func get(_ address: String) async throws -> [UInt8] {
        // Discovery may name any jwks_uri: it is held to the same rule as the configured URL.
        if let problem = JWKSLocation.fetchProblem(address) { throw JWKSError("the JWKS URL \(problem)") }
        guard let url = URL(string: address) else { throw JWKSError("not a URL: \(address)") }
        var request = URLRequest(url: url, timeoutInterval: timeoutSeconds)
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let (status, body) = try await Self.fetches.fetch(request, on: Self.session)
        guard let body else { throw JWKSError("GET \(address): the document is over 1 MiB") }
        guard status == 200 else { throw JWKSError("GET \(address) answered \(status)") }
        return body
    }
}

/// The session's delegate: each fetch's body, collected as it arrives and cut off past `limit`; and redirects
/// followed only to a URL the keys may come from (`JWKSLocation.fetchProblem`).
private final class CappedFetches: NSObject, URLSessionDataDelegate, @unchecked Sendable {  // `lock` guards `pending`
    private struct Pending {
        var continuation: CheckedContinuation<(status: Int, body: [UInt8]?), any Error>
        var status = 0
        var body: [UInt8] = []
    }

    private let limit: Int
    private let lock = NSLock()
    private var pending: [Int: Pending] = [:]

    init(limit: Int) { self.limit = limit }

    /// The status and body of `request`; a nil body was over the limit, and the transfer was stopped there.
    func fetch(_ request: URLRequest, on session: URLSession) async throws -> (status: Int, body: [UInt8]?) {
        try await withCheckedThrowingContinuation { continuation in
            let task = session.dataTask(with: request)
            lock.withLock { pending[task.taskIdentifier] = Pending(continuation: continuation) }
            task.resume()
        }
    }

    private func finish(_ task: URLSessionTask, _ result: Result<(status: Int, body: [UInt8]?), any Error>) {
        guard let entry = lock.withLock({ pending.removeValue(forKey: task.taskIdentifier) }) else { return }
        entry.continuation.resume(with: result)
    }

    func urlSession(
        _ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
        completionHandler: @escaping @Sendable (URLSession.ResponseDisposition) -> Void
    ) {
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        lock.withLock { pending[dataTask.taskIdentifier]?.status = status }
        if response.expectedContentLength > Int64(limit) {
            finish(dataTask, .success((status, nil)))
            return completionHandler(.cancel)
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        let over = lock.withLock { () -> Int? in
            let id = dataTask.taskIdentifier
            guard pending[id] != nil else { return nil }
            pending[id]!.body.append(contentsOf: data)  // in place: no copy of what came before
            return pending[id]!.body.count > limit ? pending[id]!.status : nil
        }
        guard let status = over else { return }
        finish(dataTask, .success((status, nil)))
        dataTask.cancel()
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
        if let error { return finish(task, .failure(error)) }
        let collected = lock.withLock { pending[task.taskIdentifier].map { ($0.status, $0.body) } }
        guard let (status, body) = collected else { return }
        finish(task, .success((status, body)))
    }

    func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
        newRequest request: URLRequest, completionHandler: @escaping @Sendable (URLRequest?) -> Void
    ) {
        let allowed = request.url.map { JWKSLocation.fetchProblem($0.absoluteString) == nil } ?? false
        completionHandler(allowed ? request : nil)
    }
}
