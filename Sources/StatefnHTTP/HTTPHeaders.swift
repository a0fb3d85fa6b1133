// Request headers as the handler sees them.

/// Request headers with case-insensitive lookup. Names are stored lower-cased.
public struct HTTPHeaders: Sendable {
    public private(set) var entries: [(name: String, value: String)]

    public init(_ entries: [(String, String)] = []) {
        self.entries = entries.map { (name: $0.0.lowercased(), value: $0.1) }
    }

    /// For names the server has already lower-cased while reading them, so they are not copied again.
    init(lowercased entries: [(name: String, value: String)]) {
        self.entries = entries
    }

    public subscript(name: String) -> String? {
        let lower = name.lowercased()
        return entries.first(where: { $0.name == lower })?.value
    }
}
