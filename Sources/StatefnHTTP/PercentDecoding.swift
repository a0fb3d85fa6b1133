// Query-string decoding. libmicrohttpd is told to leave escapes alone (so the path reaches the router raw), which
// means query names and values arrive encoded and are decoded here.
import Glibc
import StatefnText

/// Decodes `application/x-www-form-urlencoded` text: '+' is a space and "%HH" a byte. A '%' not followed by two hex
/// digits is kept as it is; bytes that are not UTF-8 become U+FFFD.
func percentDecoded(_ text: UnsafePointer<CChar>) -> String {
    let length = strlen(text)
    return text.withMemoryRebound(to: UInt8.self, capacity: length) { start in
        let input = UnsafeBufferPointer(start: start, count: length)
        guard input.contains(where: { $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "+") }) else {
            return String(decoding: input, as: UTF8.self)
        }
        var output: [UInt8] = []
        output.reserveCapacity(length)
        var index = 0
        while index < length {
            let byte = input[index]
            if byte == UInt8(ascii: "+") {
                output.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), index + 2 < length, let high = Hex.value(of: input[index + 1]),
                let low = Hex.value(of: input[index + 2])
            {
                output.append(high << 4 | low)
                index += 2
            } else {
                output.append(byte)
            }
            index += 1
        }
        return String(decoding: output, as: UTF8.self)
    }
}
