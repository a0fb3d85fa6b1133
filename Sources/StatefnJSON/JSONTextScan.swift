// One pass over a JSON text that jansson has already accepted, for the rules jansson cannot check:
// the nesting limit, and real literals that a double cannot hold exactly (DESIGN.md sections 4 and 9).

enum JSONTextScan {
    /// Literals up to this many significant digits always survive a trip through a double (DBL_DIG).
    static let exactDigits = 15
    /// Below this decimal exponent doubles lose precision (subnormals) or become zero.
    static let smallestExactExponent = -307

    /// `input` must be valid JSON: the scan relies on it and does not validate.
    static func check(_ input: UnsafeBufferPointer<UInt8>, maxDepth: Int) throws(JSONError) {
        let count = input.count
        var depth = 0
        var index = 0
        while index < count {
            switch input[index] {
            case UInt8(ascii: "\""):
                index += 1
                while index < count {
                    let byte = input[index]
                    if byte == UInt8(ascii: "\"") { break }
                    index += byte == UInt8(ascii: "\\") ? 2 : 1
                }
                index += 1
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > maxDepth {
                    throw JSONError(.tooDeep, "nesting is deeper than \(maxDepth) levels", in: input, at: index)
                }
                index += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                index += 1
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                let literal = NumberLiteral(input, from: index)
                if literal.needsExactnessCheck { try literal.checkExact(in: input, from: index) }
                index = literal.end
            default:
                index += 1
            }
        }
    }
}

/// The shape of one JSON number token, read without allocating.
struct NumberLiteral {
    private(set) var end = 0
    private(set) var isReal = false
    private var digitCount = 0
    private var integerDigits = 0
    private var firstNonZero = -1
    private var lastNonZero = -1
    private var exponent = 0

    init(_ input: UnsafeBufferPointer<UInt8>, from start: Int) {
        var index = start
        if input[index] == UInt8(ascii: "-") { index += 1 }
        index = readDigits(input, from: index)
        integerDigits = digitCount
        if index < input.count, input[index] == UInt8(ascii: ".") {
            isReal = true
            index = readDigits(input, from: index + 1)
        }
        if index < input.count, input[index] | 0x20 == UInt8(ascii: "e") {
            isReal = true
            index += 1
            var negative = false
            if input[index] == UInt8(ascii: "-") || input[index] == UInt8(ascii: "+") {
                negative = input[index] == UInt8(ascii: "-")
                index += 1
            }
            while index < input.count, let digit = Self.digit(input[index]) {
                exponent = min(exponent * 10 + digit, 1_000_000)  // far beyond any double, and no overflow
                index += 1
            }
            if negative { exponent = -exponent }
        }
        end = index
    }

    private mutating func readDigits(_ input: UnsafeBufferPointer<UInt8>, from start: Int) -> Int {
        var index = start
        while index < input.count, let digit = Self.digit(input[index]) {
            if digit != 0 {
                if firstNonZero < 0 { firstNonZero = digitCount }
                lastNonZero = digitCount
            }
            digitCount += 1
            index += 1
        }
        return index
    }

    private static func digit(_ byte: UInt8) -> Int? {
        byte &- UInt8(ascii: "0") < 10 ? Int(byte &- UInt8(ascii: "0")) : nil
    }

    var isZero: Bool { firstNonZero < 0 }
    var significantDigits: Int { isZero ? 0 : lastNonZero - firstNonZero + 1 }
    /// The power of ten of the first significant digit: 123.4 → 2, 0.05 → -2.
    var decimalExponent: Int { integerDigits - 1 - firstNonZero + exponent }

    /// Integers need no check: jansson holds every 64-bit one exactly and refuses the rest.
    var needsExactnessCheck: Bool {
        isReal && !isZero
            && (significantDigits > JSONTextScan.exactDigits || decimalExponent < JSONTextScan.smallestExactExponent)
    }

    /// The rare path: reads the literal as jansson did (correctly rounded) and compares the shortest form of that
    /// double with the literal, digit by digit.
    func checkExact(in input: UnsafeBufferPointer<UInt8>, from start: Int) throws(JSONError) {
        let token = input[start..<end]
        let shortest = Array((Double(String(decoding: token, as: UTF8.self)) ?? .nan).description.utf8)
        let held = shortest.withUnsafeBufferPointer { NumberLiteral($0, from: 0).normalized(in: $0, from: 0) }
        if held.digits == normalized(in: input, from: start).digits, held.exponent == decimalExponent { return }
        let reason =
            significantDigits > JSONTextScan.exactDigits
            ? "more than \(JSONTextScan.exactDigits) significant digits" : "too close to zero for a 64-bit double"
        throw JSONError(.inexactNumber, "number \(quoted(token)) cannot be represented exactly (\(reason))", in: input, at: start)
    }

    /// The significant digits without leading or trailing zeros, and the power of ten of the first one.
    private func normalized(in input: UnsafeBufferPointer<UInt8>, from start: Int) -> (digits: [UInt8], exponent: Int) {
        guard !isZero else { return ([], 0) }
        var digits: [UInt8] = []
        var ordinal = 0
        for byte in input[start..<end] where Self.digit(byte) != nil {
            if ordinal > lastNonZero { break }
            if ordinal >= firstNonZero { digits.append(byte) }
            ordinal += 1
        }
        return (digits, decimalExponent)
    }
}
