// How much JSON statefn accepts from one source before refusing it, checked before and while parsing.

/// Limits applied while parsing. Client input gets `client`; worker output gets `worker`.
public struct JSONLimits: Sendable {
    public var maxBytes: Int
    /// Containers nested deeper than this are refused; `[]` is depth 1 and a scalar depth 0.
    public var maxDepth: Int
    /// When false, a repeated key keeps its first position and takes its last value.
    public var rejectDuplicateKeys: Bool
    public init(maxBytes: Int, maxDepth: Int = 64, rejectDuplicateKeys: Bool = true) {
        self.maxBytes = maxBytes
        self.maxDepth = maxDepth
        self.rejectDuplicateKeys = rejectDuplicateKeys
    }
    public static let client = JSONLimits(maxBytes: 1 << 20, maxDepth: 64, rejectDuplicateKeys: true)
    public static let worker = JSONLimits(maxBytes: 8 << 20, maxDepth: 128, rejectDuplicateKeys: true)
}
