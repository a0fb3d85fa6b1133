// Request ids: the client's own if it is safe to echo into headers and logs, else a fresh one.
import Synchronization
import StatefnText

enum RequestID {
    /// The client's X-Request-Id when it is 1–128 printable ASCII characters (0x21–0x7E), else a new id.
    static func accept(_ clientValue: String?) -> String {
        if let value = clientValue, isSane(value) { return value }
        return generate()
    }

    static func isSane(_ value: String) -> Bool {
        let utf8 = value.utf8
        return (1...128).contains(utf8.count) && utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// 15 hex digits. They are unique within the process (a bijective mix of a counter) and unpredictable across
    /// processes (a random seed), at the cost of an atomic add rather than a getrandom call per request.
    static func generate() -> String {
        var bits = mix(seed &+ counter.wrappingAdd(1, ordering: .relaxed).oldValue)
        return String(unsafeUninitializedCapacity: 15) { buffer in
            for index in 0..<15 {
                buffer[index] = Hex.digits[Int(bits & 0xF)]
                bits >>= 4
            }
            return 15
        }
    }

    /// SplitMix64's finaliser: a bijection on 64 bits that scatters consecutive inputs.
    private static func mix(_ value: UInt64) -> UInt64 {
        var z = value &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    private static let seed = UInt64.random(in: .min ... .max)
    private static let counter = Atomic<UInt64>(0)
}
