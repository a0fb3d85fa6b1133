// Request ids: the client's own if it is safe to echo into headers and logs, else a fresh random one.

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

    /// 15 random hex digits: 60 bits is plenty to tell requests apart, and 15 bytes still fit in a String
    /// without a heap allocation.
    static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        var bits = generator.next() as UInt64
        return String(unsafeUninitializedCapacity: 15) { buffer in
            let digits = "0123456789abcdef".utf8
            for index in 0..<15 {
                buffer[index] = digits[digits.index(digits.startIndex, offsetBy: Int(bits & 0xF))]
                bits >>= 4
            }
            return 15
        }
    }
}
