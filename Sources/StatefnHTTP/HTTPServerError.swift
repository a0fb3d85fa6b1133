// Why the front door could not start. The message names the address and the system's reason.

public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
