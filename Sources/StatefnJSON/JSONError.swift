// The one error type of StatefnJSON: why a document was refused, and where.

/// Why a document was refused. `description` is safe to show to a client: it names line and column.
/// Lines and columns are 1-based; columns count Unicode scalars, as jansson does.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case syntax, tooLarge = "too_large", tooDeep = "too_deep", duplicateKey = "duplicate_key"
        case numberOutOfRange = "number_out_of_range", inexactNumber = "inexact_number"
    }
    public var code: Code
    public var message: String
    public var line: Int
    public var column: Int
    public init(code: Code, message: String, line: Int, column: Int) {
        self.code = code
        self.message = message
        self.line = line
        self.column = column
    }
    public var description: String { "\(message) at line \(line), column \(column)" }
}

extension JSONError {
    /// An error located at a byte offset of `input`, for the checks statefn makes itself.
    init(_ code: Code, _ message: String, in input: UnsafeBufferPointer<UInt8>, at offset: Int) {
        let position = SourcePosition(of: offset, in: input)
        self.init(code: code, message: message, line: position.line, column: position.column)
    }
}

/// A number literal as a message shows it: whole if short, otherwise its start and its length.
func quoted(_ token: Slice<UnsafeBufferPointer<UInt8>>) -> String {
    if token.count <= 40 { return String(decoding: token, as: UTF8.self) }
    return String(decoding: token.prefix(24), as: UTF8.self) + "… (\(token.count) characters)"
}

/// Line and column of a byte, counted the way jansson counts them so that all errors agree.
struct SourcePosition {
    var line = 1
    var column = 0

    init(of offset: Int, in input: UnsafeBufferPointer<UInt8>) {
        for byte in input[..<min(offset + 1, input.count)] {
            if byte == UInt8(ascii: "\n") {
                line += 1
                column = 0
            } else if byte & 0xC0 != 0x80 {
                column += 1
            }
        }
    }
}
