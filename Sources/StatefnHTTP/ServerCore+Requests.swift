// One request's way through the front door: headers, body within the limit, suspend while the handler runs,
// resume, and queue the response. libmicrohttpd drives it by calling the access handler again and again.
import CMicroHTTPD
import Glibc

extension ServerCore {
    /// The first call for a request: headers are in, no body has been read.
    func begin(connection: OpaquePointer, method: UnsafePointer<CChar>, path: UnsafePointer<CChar>) -> RequestContext {
        activeRequests.add(1, ordering: .relaxed)
        deadlines.headArrived(on: connection)
        let headers = collectValues(of: connection, kind: .HEADER_KIND, iterator: collectHeader)
        return RequestContext(
            connection: connection, method: String(cString: method), path: String(cString: path), headers: headers,
            requestID: RequestID.accept(headers.first(where: { $0.name == "x-request-id" })?.value))
    }

    /// The peer's address, as text.
    private func clientAddress(of connection: OpaquePointer) -> String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer in
            cmhd_client_address(connection, buffer.baseAddress!, 64)
            return String(cString: buffer.baseAddress!)
        }
    }

    /// Refuses a body whose declared length is over the limit. A client waiting for `100 Continue` gets the 413
    /// at once and never sends the body. One that sends it anyway (Python's http.client, Go, Node) would find the
    /// socket closed under its send and read a reset, not the answer: its body is read and dropped, up to
    /// `discardBytes`, and then it gets the 413, as nginx's lingering close lets it. Past that bound it is answered
    /// at once, and libmicrohttpd closes the connection with the body unread.
    func checkDeclaredLength(of context: RequestContext) -> MHD_Result {
        guard let declared = context.headers.first(where: { $0.name == "content-length" }).flatMap({ Int($0.value) })
        else { return .YES }
        if declared > configuration.maxBodyBytes {
            let waitsForContinue = context.headers.contains {
                $0.name == "expect" && $0.value.lowercased() == "100-continue"
            }
            if waitsForContinue || declared > configuration.discardBytes {
                context.phase = .answered
                return queue(bodyTooLarge(context), for: context)
            }
            logger.notice(
                "request body over the limit; reading and dropping it to answer 413",
                metadata: ["declared_bytes": "\(declared)", "request_id": "\(context.requestID)"])
            context.phase = .overLimit
            return .YES
        }
        // Capped, so that clients declaring large bodies and sending them slowly cannot pin memory up front.
        context.body.reserveCapacity(min(declared, 64 << 10))
        return .YES
    }

    /// Every later call: a piece of body (`size > 0`), the end of the body, or the resume after the handler.
    func proceed(_ context: RequestContext, data: UnsafePointer<CChar>?, size: UnsafeMutablePointer<Int>) -> MHD_Result {
        if size.pointee > 0 {
            defer { size.pointee = 0 }
            context.received += size.pointee
            switch context.phase {
            case .receiving where context.received <= configuration.maxBodyBytes:
                context.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: size.pointee))
            case .receiving:
                // libmicrohttpd 0.9.75 cannot queue a response mid-body, so the rest is read and dropped, and
                // 413 goes out at the end.
                context.phase = .overLimit
                context.body = []
            case .overLimit where context.received > configuration.discardBytes:
                // A body that keeps coming is cut off rather than read forever.
                logger.notice(
                    "request body still coming past the discard bound; closing the connection",
                    metadata: ["bytes": "\(context.received)", "request_id": "\(context.requestID)"])
                return .NO
            default:
                break
            }
            return .YES
        }
        switch context.phase {
        case .receiving:
            return dispatch(context)
        case .overLimit:
            context.phase = .answered
            return queue(bodyTooLarge(context), for: context)
        case .handling:
            context.phase = .answered
            let response = context.response ?? .problem(status: 500, detail: "No response.", requestID: context.requestID)
            context.response = nil
            return queue(response, for: context)
        case .answered:
            return .YES
        }
    }

    /// Runs the handler on this thread until it first waits (`Task.immediate`). A handler that finishes without
    /// waiting is answered at once; otherwise the connection is suspended and the handler's Task resumes it with the
    /// response. Running the start inline saves a thread wake-up per request.
    private func dispatch(_ context: RequestContext) -> MHD_Result {
        // Collected only up to one past the bound: a query of thousands of parameters costs no more than that.
        let query = collectValues(
            of: context.connection, kind: .GET_ARGUMENT_KIND, iterator: collectQueryArgument,
            limit: configuration.maxQueryParameters + 1)
        guard query.count <= configuration.maxQueryParameters else {
            context.phase = .answered
            return queue(
                .problem(
                    status: 400, detail: "At most \(configuration.maxQueryParameters) query parameters are allowed.",
                    requestID: context.requestID), for: context)
        }
        var request = HTTPRequest(
            method: context.method, path: context.path, query: query,
            headers: HTTPHeaders(lowercased: context.headers), body: context.body, requestID: context.requestID)
        request.clientAddress = clientAddress(of: context.connection)
        context.body = []
        // Held until the connection is suspended and registered (or answered), so that `stop` never stops the
        // daemon under a connection that is being suspended or resumed.
        changingSuspension.add(1, ordering: .sequentiallyConsistent)
        defer { changingSuspension.subtract(1, ordering: .sequentiallyConsistent) }
        guard !stopping.load(ordering: .sequentiallyConsistent) else {
            context.phase = .answered
            return queue(
                .problem(
                    status: 503, detail: "The server is shutting down.", requestID: context.requestID,
                    headers: [(name: "Retry-After", value: "1")]),
                for: context)
        }
        context.phase = .handling
        let handler = self.handler
        Task.immediate(executorPreference: executor) {
            let response = await handler(request)
            if self.complete(context, with: response) { response.afterSending?() }
        }
        if context.handoff.load(ordering: .acquiring) == RequestContext.Handoff.finished {
            let response = responseLeft(in: context)
            defer { response.afterSending?() }
            context.phase = .answered
            return queue(response, for: context)
        }
        MHD_suspend_connection(context.connection)
        state.withLock { $0.suspended[ObjectIdentifier(context)] = context }
        guard
            !context.handoff.compareExchange(
                expected: RequestContext.Handoff.running, desired: RequestContext.Handoff.suspended,
                ordering: .acquiringAndReleasing
            ).exchanged
        else { return .YES }
        // The handler finished on another thread between the check above and the suspend, and left the response to
        // this thread.
        let response = responseLeft(in: context)
        resume(context, with: response)
        response.afterSending?()
        return .YES
    }

    /// The response `complete` left for the dispatching thread; it is always there once the handoff says finished.
    private func responseLeft(in context: RequestContext) -> HTTPResponse {
        context.handlerResponse ?? .problem(status: 500, detail: "No response.", requestID: context.requestID)
    }

    /// Hands the handler's response to the connection: to the dispatching thread when it has not suspended the
    /// connection yet (returning false: that thread then runs `afterSending`), otherwise by resuming the
    /// connection, unless `stop` answers it instead.
    private func complete(_ context: RequestContext, with response: HTTPResponse) -> Bool {
        context.handlerResponse = response
        guard
            context.handoff.exchange(RequestContext.Handoff.finished, ordering: .acquiringAndReleasing)
                == RequestContext.Handoff.suspended
        else { return false }
        changingSuspension.add(1, ordering: .sequentiallyConsistent)
        defer { changingSuspension.subtract(1, ordering: .sequentiallyConsistent) }
        resume(context, with: response)
        return true
    }

    /// Takes the suspended `context` out of the registry and resumes its connection with `response`, unless `stop`
    /// is taking over (it answers 503 instead). The caller holds `changingSuspension`.
    private func resume(_ context: RequestContext, with response: HTTPResponse) {
        guard !stopping.load(ordering: .sequentiallyConsistent),
            state.withLock({ $0.suspended.removeValue(forKey: ObjectIdentifier(context)) }) != nil
        else { return }
        context.response = response
        // Outside the lock: resuming writes to libmicrohttpd's wake-up descriptor.
        MHD_resume_connection(context.connection)
    }

    /// The completion callback: the request is over, answered or not (the client may have gone mid-body).
    func finish() {
        activeRequests.subtract(1, ordering: .relaxed)
    }

    private func bodyTooLarge(_ context: RequestContext) -> HTTPResponse {
        .problem(
            status: 413, detail: "The request body is larger than the limit of \(configuration.maxBodyBytes) bytes.",
            requestID: context.requestID)
    }

    /// Queues `response` with `X-Request-Id` (and `Connection: close` while quiescing). Wraps
    /// MHD_create_response_from_buffer, MHD_add_response_header and MHD_queue_response.
    private func queue(_ response: HTTPResponse, for context: RequestContext) -> MHD_Result {
        var response = response
        if !(100...599).contains(response.status) {
            logger.error("handler returned an invalid status", metadata: ["status": "\(response.status)"])
            response = .problem(status: 500, detail: "Invalid response.", requestID: context.requestID)
        }
        let created: OpaquePointer?
        if let stream = response.stream {
            created = streamingResponse(stream, for: context)
        } else {
            created = response.body.withUnsafeBytes { body in
                MHD_create_response_from_buffer(
                    body.count, UnsafeMutableRawPointer(mutating: body.baseAddress), .RESPMEM_MUST_COPY)
            }
        }
        guard let created else { return .NO }
        defer { MHD_destroy_response(created) }
        for header in response.headers where MHD_add_response_header(created, header.name, header.value) != .YES {
            logger.error(
                "libmicrohttpd refused a response header (empty value, line break, or Content-Length)",
                metadata: ["header": "\(header.name)"])
        }
        MHD_add_response_header(created, "X-Request-Id", context.requestID)
        if quiescing.load(ordering: .relaxed) { MHD_add_response_header(created, "Connection", "close") }
        return MHD_queue_response(context.connection, UInt32(response.status), created)
    }
}

extension ServerCore {
    /// A chunked response read from `stream`, registered so that `stop` can end it. Wraps
    /// MHD_create_response_from_callback; the binding is released by the free callback.
    fileprivate func streamingResponse(_ stream: HTTPStream, for context: RequestContext) -> OpaquePointer? {
        let registered = state.withLock { state -> Bool in
            guard case .running = state.lifecycle, !stopping.load(ordering: .sequentiallyConsistent) else {
                return false
            }
            state.streams[ObjectIdentifier(stream)] = stream
            return true
        }
        if !registered { stream.finish() }
        stream.attach(to: context.connection)
        let binding = Unmanaged.passRetained(StreamBinding(stream: stream, core: self))
        guard
            let response = MHD_create_response_from_callback(
                UInt64.max, 32 << 10, readStream, binding.toOpaque(), releaseStream)
        else {
            binding.takeRetainedValue().release()
            return nil
        }
        return response
    }

    fileprivate func forget(_ stream: HTTPStream) {
        state.withLock { _ = $0.streams.removeValue(forKey: ObjectIdentifier(stream)) }
    }
}

/// What libmicrohttpd's stream callbacks get as `cls`.
private final class StreamBinding {
    let stream: HTTPStream
    let core: ServerCore
    init(stream: HTTPStream, core: ServerCore) {
        self.stream = stream
        self.core = core
    }
    func release() {
        stream.released()
        core.forget(stream)
    }
}

private func readStream(cls: UnsafeMutableRawPointer?, position: UInt64, buffer: UnsafeMutablePointer<CChar>?, max: Int)
    -> Int
{
    guard let cls, let buffer else { return -2 }
    return Unmanaged<StreamBinding>.fromOpaque(cls).takeUnretainedValue().stream.read(into: buffer, max: max)
}

private func releaseStream(cls: UnsafeMutableRawPointer?) {
    guard let cls else { return }
    Unmanaged<StreamBinding>.fromOpaque(cls).takeRetainedValue().release()
}

/// Reads one kind of connection value into an array, without a retained box: the iterator writes through `cls`.
/// Wraps MHD_get_connection_values.
/// What a value iterator collects into: the values, up to `limit` of them.
private struct CollectedValues {
    var values: [(name: String, value: String)] = []
    var limit = Int.max
}

private func collectValues(
    of connection: OpaquePointer, kind: MHD_ValueKind, iterator: MHD_KeyValueIterator, limit: Int = .max
) -> [(name: String, value: String)] {
    var collected = CollectedValues(limit: limit)
    withUnsafeMutablePointer(to: &collected) { _ = MHD_get_connection_values(connection, kind, iterator, $0) }
    return collected.values
}

private func collectHeader(
    cls: UnsafeMutableRawPointer?, kind: MHD_ValueKind, key: UnsafePointer<CChar>?, value: UnsafePointer<CChar>?
) -> MHD_Result {
    guard let cls, let key else { return .YES }
    cls.assumingMemoryBound(to: CollectedValues.self).pointee.values.append(
        (name: lowercasedASCII(key), value: value.map { String(cString: $0) } ?? ""))
    return .YES
}

private func collectQueryArgument(
    cls: UnsafeMutableRawPointer?, kind: MHD_ValueKind, key: UnsafePointer<CChar>?, value: UnsafePointer<CChar>?
) -> MHD_Result {
    guard let cls, let key else { return .YES }
    let collected = cls.assumingMemoryBound(to: CollectedValues.self)
    collected.pointee.values.append((name: percentDecoded(key), value: value.map(percentDecoded) ?? ""))
    return collected.pointee.values.count < collected.pointee.limit ? .YES : .NO
}

/// A header name lower-cased in the same pass that copies it out of libmicrohttpd's buffer.
private func lowercasedASCII(_ text: UnsafePointer<CChar>) -> String {
    let length = strlen(text)
    return String(unsafeUninitializedCapacity: length) { buffer in
        for index in 0..<length {
            let byte = UInt8(bitPattern: text[index])
            buffer[index] = (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 : byte
        }
        return length
    }
}
