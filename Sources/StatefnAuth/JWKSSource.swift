// Where the JWT verification keys come from: a JWKS file, a JWKS URL, or an OIDC issuer whose discovery document
// (`/.well-known/openid-configuration`) names the JWKS URL. Fetched off the request path, with a time limit.
import Foundation
import StatefnJSON

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
    public static func fetchProblem(_ url: String) -> String? {
        let lower = url.lowercased()
        if lower.hasPrefix("https://") { return url.count > 8 ? nil : "no host in \(url)" }
        guard lower.hasPrefix("http://") else { return "must be an https URL, got \(url)" }
        let rest = url.dropFirst(7)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let hostAndPort = authority.split(separator: "@").last.map(String.init) ?? ""
        let host: String
        if hostAndPort.hasPrefix("["), let close = hostAndPort.firstIndex(of: "]") {
            host = String(hostAndPort[hostAndPort.index(after: hostAndPort.startIndex)..<close])
        } else {
            host = String(hostAndPort.prefix { $0 != ":" })
        }
        return isLoopbackHost(host)
            ? nil : "must be an https URL (plain http is allowed to a loopback host only), got \(url)"
    }

    /// localhost, ::1 or 127.0.0.0/8, with or without IPv6 brackets.
    public static func isLoopbackHost(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
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

    /// No cache, on disk or in memory: a rotated key must be seen at the next fetch.
    private static let session = URLSession(configuration: .ephemeral)

    private func get(_ address: String) async throws -> [UInt8] {
        // Discovery may name any jwks_uri: it is held to the same rule as the configured URL.
        if let problem = JWKSLocation.fetchProblem(address) { throw JWKSError("the JWKS URL \(problem)") }
        guard let url = URL(string: address) else { throw JWKSError("not a URL: \(address)") }
        var request = URLRequest(url: url, timeoutInterval: timeoutSeconds)
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let (data, response) = try await Self.session.data(for: request)
        guard let status = (response as? HTTPURLResponse)?.statusCode, status == 200 else {
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            throw JWKSError("GET \(address) answered \(status)")
        }
        guard data.count <= 1 << 20 else { throw JWKSError("GET \(address): the document is over 1 MiB") }
        return Array(data)
    }
}
