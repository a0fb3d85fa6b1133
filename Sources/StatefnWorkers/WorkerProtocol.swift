// The worker protocol (DESIGN.md section 3), in one place for both modes: the request line the gateway writes,
// and how a line the worker writes back is read: as JSON within `max_response_bytes`, as the optional
// `{"ready":true}` first line, or as the answer to the request in flight (an object with that request's `"id"`).
import Glibc
import StatefnJSON

enum WorkerProtocol {
    /// The request as one line, newline included, and its id, which the answer must repeat.
    static func requestLine(_ request: JSONValue, to function: FunctionDefinition) throws(WorkerError)
        -> (id: String, line: [UInt8])
    {
        guard let id = request["id"]?.stringValue else {
            throw WorkerError(.protocolViolation, "the request to \(function.name) has no string id")
        }
        var line = request.encoded()
        line.append(0x0A)
        return (id, line)
    }

    /// A stdout line as JSON, within `max_response_bytes` (`truncated` says the line was cut at `limit`); parsed
    /// once, then checked as the ready line (`isReady`) or as an answer (`answer`).
    static func parse(_ line: [UInt8], truncated: Bool, limit: Int) -> Result<JSONValue, WorkerError> {
        guard !truncated else {
            return .failure(WorkerError(.invalidResponse, "an answer line over \(limit) bytes (max_response_bytes)"))
        }
        do {
            return .success(try JSONValue.parse(line, limits: .worker))
        } catch {
            let excerpt = String(decoding: line.prefix(200), as: UTF8.self)
            return .failure(WorkerError(.invalidResponse, "the answer is not JSON (\(error)): \(excerpt)"))
        }
    }

    /// Whether a parsed line is `{"ready":true}`, the optional first line of a warm worker. Fork mode skips it
    /// too, so one SDK serves both.
    static func isReady(_ parsed: Result<JSONValue, WorkerError>) -> Bool {
        guard case .success(let value) = parsed else { return false }
        return value["ready"] == .bool(true) && value["id"] == nil
    }

    /// The answer to `requestID`: a JSON object whose `"id"` is that.
    static func answer(_ parsed: Result<JSONValue, WorkerError>, to requestID: String) -> Result<JSONValue, WorkerError> {
        let answer: JSONValue
        switch parsed {
        case .failure(let error): return .failure(error)
        case .success(let value): answer = value
        }
        guard case .object(let object) = answer else {
            return .failure(WorkerError(.invalidResponse, "the answer is not a JSON object"))
        }
        guard object["id"]?.stringValue == requestID else {
            let id = object["id"]?.encodedString() ?? "no id"
            return .failure(WorkerError(.protocolViolation, "answered \(id) to request \"\(requestID)\""))
        }
        return .success(answer)
    }
}

extension WorkerError {
    /// The deadline passed; the process group has been told to stop.
    static func timedOut(_ function: FunctionDefinition, pid: pid_t) -> WorkerError {
        WorkerError(
            .timedOut,
            "\(function.name): no answer within \(function.manifest.timeoutMs) ms; process group \(pid) terminated")
    }
}
