// Connection settings, validated by libpq itself so a typo fails at start-up, not on the first request.
import CLibPQ
import Foundation
import StatefnText

/// Connection settings: a `postgres://` / `postgresql://` URL or a libpq key=value string, validated up front.
public struct PostgresConfig: Sendable {
    public var conninfo: String

    public init(_ conninfo: String) throws(PostgresError) {
        var message: UnsafeMutablePointer<CChar>?
        guard let options = PQconninfoParse(conninfo, &message) else {
            let text = message.map { String(cString: $0) } ?? "out of memory"
            PQfreemem(message)
            throw PostgresError(
                code: .invalidConfiguration, detail: "invalid connection string: \(Self.redacted(text))")
        }
        PQconninfoFree(options)
        self.conninfo = conninfo
    }

    /// Calls `body` with libpq's keyword and value arrays for PQconnectdbParams / PQpingParams. Our defaults come
    /// before `dbname`, which libpq expands from the connection string, so the string's own settings win.
    func withConnectParameters<R>(
        _ body: (UnsafePointer<UnsafePointer<CChar>?>, UnsafePointer<UnsafePointer<CChar>?>) -> R
    ) -> R {
        let keywordNames: [String] = ["fallback_application_name", "connect_timeout", "dbname"]
        let keywords = keywordNames.map { strdup($0) }
        let values = ["statefn", "5", conninfo].map { (value: String) in strdup(value) }
        defer { (keywords + values).forEach { free($0) } }
        let keywordPointers = keywords.map { UnsafePointer($0) } + [nil]
        let valuePointers = values.map { UnsafePointer($0) } + [nil]
        return body(keywordPointers, valuePointers)
    }

    /// libpq quotes pieces of the input in its parse errors (`missing "=" after "…"`), which may be a password.
    /// Only quoted option names survive.
    static func redacted(_ message: String) -> String {
        message.trimmingSuffix(while: \.isNewline)
            .split(separator: "\"", omittingEmptySubsequences: false)
            .enumerated()
            .map { index, part in index % 2 == 1 && !knownKeywords.contains(String(part)) ? "…" : String(part) }
            .joined(separator: "\"")
    }

    private static let knownKeywords: Set<String> = {
        var names: Set<String> = ["="]
        guard let defaults = PQconndefaults() else { return names }
        defer { PQconninfoFree(defaults) }
        var option = defaults
        while let keyword = option.pointee.keyword {
            names.insert(String(cString: keyword))
            option += 1
        }
        return names
    }()
}

