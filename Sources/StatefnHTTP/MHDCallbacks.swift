// The C entry points libmicrohttpd calls from its own threads. They are free functions on purpose: a closure
// formed in main-actor code would carry that isolation and trap when called from a C thread.
import CMicroHTTPD
import Glibc
import StatefnText

/// Called once when the headers are in, once per piece of body, once at the end of the body, and once more after
/// the connection is resumed. `contextSlot` is the request's `con_cls`.
func accessHandler(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?, url: UnsafePointer<CChar>?,
    method: UnsafePointer<CChar>?, version: UnsafePointer<CChar>?, uploadData: UnsafePointer<CChar>?,
    uploadDataSize: UnsafeMutablePointer<Int>?, contextSlot: UnsafeMutablePointer<UnsafeMutableRawPointer?>?
) -> MHD_Result {
    guard let cls, let connection, let url, let method, let uploadDataSize, let contextSlot else { return .NO }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    if let existing = contextSlot.pointee {
        let context = Unmanaged<RequestContext>.fromOpaque(existing).takeUnretainedValue()
        return core.proceed(context, data: uploadData, size: uploadDataSize)
    }
    let context = core.begin(connection: connection, method: method, path: url)
    // Released in requestCompleted, which libmicrohttpd calls exactly once for every request it called us about.
    contextSlot.pointee = Unmanaged.passRetained(context).toOpaque()
    return core.checkDeclaredLength(of: context)
}

/// The request is over: answered, failed, timed out, or its client went away.
func requestCompleted(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?, contextSlot: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
    reason: MHD_RequestTerminationCode
) {
    guard let cls, let contextSlot, let context = contextSlot.pointee else { return }
    contextSlot.pointee = nil
    Unmanaged<RequestContext>.fromOpaque(context).release()
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    if let connection { core.deadlines.requestEnded(on: connection) }
    core.finish()
}

/// A connection opened or closed: the header timeout's bookkeeping (`ConnectionDeadlines`).
func connectionNotified(
    cls: UnsafeMutableRawPointer?, connection: OpaquePointer?, socketContext: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
    code: MHD_ConnectionNotificationCode
) {
    guard let cls, let connection else { return }
    let deadlines = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue().deadlines
    // MHD_CONNECTION_NOTIFY_STARTED is 0, CLOSED 1 (Swift sees the enum without case names).
    if code.rawValue == 0 { deadlines.opened(connection) } else { deadlines.closed(connection) }
}

/// libmicrohttpd's own error messages, mostly about peers that misbehave.
func logMessage(cls: UnsafeMutableRawPointer?, format: UnsafePointer<CChar>?, arguments: CVaListPointer?) {
    guard let cls, let format, let arguments else { return }
    var buffer = [CChar](repeating: 0, count: 512)
    _ = vsnprintf(&buffer, buffer.count, format, arguments)
    let message = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.trimmingSuffix(while: { $0 == "\n" })
    Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue().logger.notice("libmicrohttpd: \(message)")
}

