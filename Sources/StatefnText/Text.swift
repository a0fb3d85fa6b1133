// Small text helpers every module needs, each in one place: hex digits, the name rule for functions, and trims.
// No dependencies, so the lowest modules (StatefnJSON, StatefnPostgres) can use it too.

/// Lowercase hexadecimal, two digits a byte.
public enum Hex {
    public static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// The value of one hex digit, either case; nil for any other byte.
    public static func value(of byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x61...0x66: byte - 0x61 + 10
        case 0x41...0x46: byte - 0x41 + 10
        default: nil
        }
    }

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil for an odd length or a byte that is not a hex digit.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let bytes = Array(text.utf8)
        guard bytes.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count / 2)
        var index = 0
        while index < bytes.count {
            guard let high = value(of: bytes[index]), let low = value(of: bytes[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

/// The rules for names (DESIGN.md section 2), compared as UTF-8 bytes.
public enum Names {
    /// `[a-z][a-z0-9_-]{0,62}`: a function's name, as the catalog, the router and scopes all check it.
    public static func isFunctionName(_ name: some StringProtocol) -> Bool {
        let bytes = Array(name.utf8)
        guard let first = bytes.first, bytes.count <= 63, (0x61...0x7A).contains(first) else { return false }
        return bytes.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x5F || $0 == 0x2D }
    }

    /// `[A-Za-z][A-Za-z0-9_.-]{0,62}`: a command's name, in a route and in a manifest's `public` list.
    public static func isCommandName(_ name: some StringProtocol) -> Bool {
        let bytes = Array(name.utf8)
        let letter = { (byte: UInt8) in (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte) }
        guard let first = bytes.first, bytes.count <= 63, letter(first) else { return false }
        return bytes.allSatisfy { letter($0) || (0x30...0x39).contains($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D }
    }
}

extension StringProtocol {
    /// Without the characters at either end for which `trimmed` holds.
    public func trimming(while trimmed: (Character) -> Bool) -> String {
        String(drop(while: trimmed).reversed().drop(while: trimmed).reversed())
    }

    /// Without the characters at the end for which `trimmed` holds.
    public func trimmingSuffix(while trimmed: (Character) -> Bool) -> String {
        var text = Substring(self)
        while let last = text.last, trimmed(last) { text = text.dropLast() }
        return String(text)
    }
}
