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

    private func get(_ address: String) async throws -> [UInt8] {
        guard let url = URL(string: address), let scheme = url.scheme, scheme == "https" || scheme == "http" else {
            throw JWKSError("not an http(s) URL: \(address)")
        }
        var request = URLRequest(url: url, timeoutInterval: timeoutSeconds)
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        let (data, response) = try await URLSession.shared.data(for: request)
        guard let status = (response as? HTTPURLResponse)?.statusCode, status == 200 else {
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            throw JWKSError("GET \(address) answered \(status)")
        }
        guard data.count <= 1 << 20 else { throw JWKSError("GET \(address): the document is over 1 MiB") }
        return Array(data)
    }
}
