// Every way a call can fail, mapped once to the status DESIGN.md section 2 names. The detail is safe for clients:
// no SQL, stack traces, worker stderr or secrets; the log line gets `logDetail` instead.
import StatefnAuth
import StatefnHTTP
import StatefnJSON
import StatefnPostgres
import StatefnWorkers

struct GatewayError: Error {
    var status: Int
    var detail: String
    /// Extra context for the log only.
    var logDetail: String?
    var headers: [(name: String, value: String)] = []
    /// For a function's own business error: its code, passed to the client as the problem `type`.
    var code: String?
    /// A refusal the function itself returned (`{"error": …}`): an answer, stored under an Idempotency-Key.
    var isBusinessError = false

    init(_ status: Int, _ detail: String, logDetail: String? = nil, headers: [(name: String, value: String)] = []) {
        self.status = status
        self.detail = detail
        self.logDetail = logDetail
        self.headers = headers
    }

    static func from(_ error: any Error) -> GatewayError {
        switch error {
        case let error as GatewayError: return error
        case let error as AuthError:
            return GatewayError(error.status, error.detail, logDetail: "auth: \(error.reason.rawValue)", headers: error.headers)
        case let error as RouteError:
            let allow = error.allow.isEmpty ? [] : [(name: "Allow", value: error.allow.joined(separator: ", "))]
            return GatewayError(error.status, error.detail, headers: allow)
        case let error as JSONError:
            return GatewayError(400, "the body is not valid JSON: \(error.description)")
        case let error as WorkerError:
            return from(error)
        case let error as PostgresError:
            switch error.code {
            case .connectionFailed, .poolTimeout, .poolClosed:
                return GatewayError(
                    503, "the database is unavailable; try again", logDetail: error.logDescription,
                    headers: [(name: "Retry-After", value: "1")])
            case .queryFailed where error.isRetryableTransactionFailure:
                // The Committer reads back every commit whose outcome is unknown (40003 included); one that keeps
                // failing with 40001/40P01 was rolled back every time.
                return GatewayError(
                    503, "the database kept aborting the transaction; nothing was committed; try again",
                    logDetail: error.logDescription, headers: [(name: "Retry-After", value: "1")])
            case .queryFailed, .invalidConfiguration:
                return GatewayError(500, "internal database error", logDetail: error.logDescription)
            }
        default:
            return GatewayError(500, "internal error", logDetail: String(describing: error))
        }
    }

    static func from(_ error: WorkerError) -> GatewayError {
        switch error.code {
        case .crashed: return GatewayError(502, "the function's worker crashed", logDetail: error.detail)
        case .invalidResponse:
            return GatewayError(502, "the function's worker returned an invalid response", logDetail: error.detail)
        case .protocolViolation:
            return GatewayError(502, "the function's worker broke the protocol", logDetail: error.detail)
        case .spawnFailed, .invalidManifest:
            return GatewayError(502, "the function's worker could not be started", logDetail: error.detail)
        case .timedOut: return GatewayError(504, "the function timed out", logDetail: error.detail)
        case .queueFull:
            return GatewayError(
                429, "the function is busy; try again", logDetail: error.detail,
                headers: [(name: "Retry-After", value: "\(error.retryAfterSeconds ?? 1)")])
        case .unhealthy:
            return GatewayError(
                503, "the function keeps crashing; it is paused until its files change or the cool-down ends",
                logDetail: error.detail, headers: [(name: "Retry-After", value: "\(error.retryAfterSeconds ?? 30)")])
        case .removed: return GatewayError(404, "the function was removed", logDetail: error.detail)
        case .shuttingDown:
            return GatewayError(
                503, "the gateway is shutting down", logDetail: error.detail, headers: [(name: "Retry-After", value: "1")])
        }
    }

    func response(requestID: String) -> HTTPResponse {
        var headers = headers
        // RFC 9110: every 401 says how to authenticate, a function's own 401 too.
        if status == 401, !headers.contains(where: { $0.name.lowercased() == "www-authenticate" }) {
            headers.append((name: "WWW-Authenticate", value: #"Bearer realm="statefn""#))
        }
        return HTTPResponse.problem(
            status: status, detail: detail, requestID: requestID, type: code ?? "about:blank", headers: headers)
    }
}
