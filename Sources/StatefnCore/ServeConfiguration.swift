// `statefn serve`'s configuration as one typed value (DESIGN.md section 7): every setting comes from its flag, else
// its STATEFN_* variable, else its default, and a value that does not parse or is out of range is refused with a
// message naming where it came from. Nothing silently falls back to a default.
import Foundation
import Logging
import StatefnAuth

/// Where settings come from: the flags given (by long name, without dashes) and the environment.
public struct ConfigurationSource: Sendable {
    public var flags: [String: String]
    public var environment: [String: String]

    public init(flags: [String: String] = [:], environment: [String: String] = [:]) {
        self.flags = flags
        self.environment = environment
    }

    /// `STATEFN_` and the flag's name in upper case with underscores: `http-threads` is `STATEFN_HTTP_THREADS`.
    public static func variable(for flag: String) -> String {
        "STATEFN_" + String(flag.uppercased().map { $0 == "-" ? "_" : $0 })
    }

    /// The setting's text and where it came from (`--flag` or `VARIABLE`); an empty variable counts as unset.
    func text(_ flag: String) -> (text: String, origin: String)? {
        if let value = flags[flag] { return (value, "--\(flag)") }
        let name = Self.variable(for: flag)
        if let value = environment[name], !value.isEmpty { return (value, name) }
        return nil
    }
}

/// A setting refused, with what to do about it.
public struct ConfigurationError: Error, Equatable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Reads typed settings from a source, each refused by its origin when malformed.
public struct SettingsReader: Sendable {
    public var source: ConfigurationSource

    public init(_ source: ConfigurationSource) { self.source = source }

    public func string(_ flag: String, default value: String) -> String { source.text(flag)?.text ?? value }

    public func optionalString(_ flag: String) -> String? {
        guard let text = source.text(flag)?.text, !text.isEmpty else { return nil }
        return text
    }

    public func integer(_ flag: String, default value: Int, in range: ClosedRange<Int>) throws(ConfigurationError)
        -> Int
    {
        guard let (text, origin) = source.text(flag) else { return value }
        guard let parsed = Int(text), range.contains(parsed) else {
            throw ConfigurationError(
                "\(origin) must be a whole number from \(range.lowerBound) to \(range.upperBound), got \(quoted(text))")
        }
        return parsed
    }

    /// A duration like 500ms, 2s, 90m, 24h or 7d, within bounds; `bareUnit` lets a plain number mean that unit
    /// (`--grace-period 10` is ten seconds).
    public func duration(
        _ flag: String, default value: Duration, from low: Duration, to high: Duration, bareUnit: Duration? = nil
    ) throws(ConfigurationError) -> Duration {
        guard let (text, origin) = source.text(flag) else { return value }
        let parsed: Duration
        if let bareUnit, let count = Int64(text), count >= 0, count <= 10 * 365 * 86_400 {
            parsed = bareUnit * count
        } else if let duration = DurationText.parse(text) {
            parsed = duration
        } else {
            throw ConfigurationError(
                "\(origin) must be a whole number with a unit (ms, s, m, h or d), like 2s; got \(quoted(text))")
        }
        guard parsed >= low, parsed <= high else {
            throw ConfigurationError(
                "\(origin) must be from \(DurationText.format(low)) to \(DurationText.format(high)), got \(text)")
        }
        return parsed
    }

    /// A rate, `N/s` or `N/min`, as per second; with `offAllowed`, `off` is nil (no limit).
    public func rate(
        _ flag: String, default value: Double?, offAllowed: Bool = false, spelled examples: String
    ) throws(ConfigurationError) -> Double? {
        guard let (text, origin) = source.text(flag) else { return value }
        if offAllowed, text == "off" { return nil }
        guard let rate = RateLimiter.parseRate(text) else {
            throw ConfigurationError("\(origin) must look like \(examples), got \(text)")
        }
        return rate
    }

    /// A switch: a flag given is on; a variable must say 1, true, yes, 0, false or no.
    public func bool(_ flag: String) throws(ConfigurationError) -> Bool {
        guard let (text, origin) = source.text(flag) else { return false }
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ConfigurationError("\(origin) must be 1 or 0 (true or false), got \(quoted(text))")
        }
    }

    public func choice<T>(_ flag: String, default value: T, _ choices: [(String, T)]) throws(ConfigurationError) -> T {
        guard let (text, origin) = source.text(flag) else { return value }
        guard let chosen = choices.first(where: { $0.0 == text }) else {
            throw ConfigurationError(
                "\(origin) must be one of \(choices.map(\.0).joined(separator: ", ")), got \(quoted(text))")
        }
        return chosen.1
    }

    private func quoted(_ text: String) -> String { "\"\(text)\"" }
}

/// Durations as flags and STATEFN_* variables spell them: a whole number and a unit.
public enum DurationText {
    public static func parse(_ text: String) -> Duration? {
        let digits = text.prefix(while: \.isASCII).prefix(while: \.isNumber)
        let unit = text.dropFirst(digits.count)
        let perUnit: Int64? =
            switch unit {
            case "ms": 1
            case "s": 1000
            case "m": 60_000
            case "h": 3_600_000
            case "d": 86_400_000
            default: nil
            }
        guard let perUnit, let count = Int64(digits), count <= 10 * 365 * 86_400_000 / perUnit else { return nil }
        return .milliseconds(count * perUnit)
    }

    /// The shortest spelling `parse` reads back: 1h, 90s, 250ms.
    public static func format(_ duration: Duration) -> String {
        let ms = Int64(duration.milliseconds)
        for (unit, size) in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000)]
        where ms >= size && ms % size == 0 {
            return "\(ms / size)\(unit)"
        }
        return "\(ms)ms"
    }
}

/// `HOST:PORT`, with `[v6]:PORT` for IPv6 literals.
public struct ListenAddress: Sendable, Equatable {
    public var host: String
    public var port: Int

    public init(_ text: String, origin: String = "--listen") throws(ConfigurationError) {
        let hostPart: Substring
        let portPart: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ConfigurationError("\(origin) must be HOST:PORT, got \(text)") }
            portPart = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            hostPart = text[..<colon]
            portPart = text[text.index(after: colon)...]
        } else {
            throw ConfigurationError("\(origin) must be HOST:PORT, got \(text)")
        }
        guard !hostPart.isEmpty, let port = Int(portPart), (0...65535).contains(port) else {
            throw ConfigurationError("\(origin) must be HOST:PORT with a port from 0 to 65535, got \(text)")
        }
        host = String(hostPart)
        self.port = port
    }

    public var urlHost: String { host.contains(":") ? "[\(host)]" : host }

    public var isLoopback: Bool { Self.isLoopback(host) }

    public static func isLoopback(_ host: String) -> Bool { JWKSLocation.isLoopbackHost(host) }
}

/// How log lines look: one JSON object per line, or a line a person reads.
public enum LogFormat: String, Sendable {
    case json, text
}

/// Where the database is: DATABASE_URL, or the embedded cluster under the data directory. Shared by every command.
public struct DatabaseSettings: Sendable, Equatable {
    /// DATABASE_URL, passed to libpq unchanged (sslmode, options=--cluster=… and the rest); or the contents of the
    /// file DATABASE_URL_FILE names (a mounted secret), so that the URL is in no process's environment, not even
    /// that of an init (tini) whose /proc entries a worker of the same account could read.
    public var url: String?
    public var dataDirectory: String
    public var migrationsDirectory: String?
    public var poolSize: Int

    public init(_ settings: SettingsReader) throws(ConfigurationError) {
        let environment = settings.source.environment
        url = environment["DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }
        if let file = environment["DATABASE_URL_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            guard url == nil else { throw ConfigurationError("set DATABASE_URL or DATABASE_URL_FILE, not both") }
            guard let data = FileManager.default.contents(atPath: file),
                let text = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines),
                !text.isEmpty
            else { throw ConfigurationError("DATABASE_URL_FILE \(file) cannot be read, or is empty") }
            url = text
        }
        dataDirectory = settings.string("data-dir", default: ".statefn")
        migrationsDirectory = settings.optionalString("migrations-dir")
        poolSize = try settings.integer("db-pool-size", default: 16, in: 1...1000)
    }
}

/// Who may call: API keys always; JWTs from one key source; a rate limit per caller.
public struct AuthSettings: Sendable, Equatable {
    public var jwksFile: String?
    public var jwksURL: String?
    public var oidcIssuer: String?
    public var audience: String?
    public var issuer: String?
    /// Requests per second per caller (nil: no limit), and the burst above it (nil: one second's worth).
    public var rateLimit: Double?
    public var rateBurst: Int?
    public var insecureNoAuth: Bool
    public var devKey: Bool
    /// Failed authentications per client address, per second, after a burst of `authFailureBurst`; nil: no limit.
    public var authFailureRate: Double?
    public static let authFailureBurst = 30

    public init(_ settings: SettingsReader, listen: ListenAddress) throws(ConfigurationError) {
        jwksFile = settings.optionalString("jwks-file")
        jwksURL = settings.optionalString("jwks-url")
        oidcIssuer = settings.optionalString("oidc-issuer")
        audience = settings.optionalString("jwt-audience")
        issuer = settings.optionalString("jwt-issuer")
        rateLimit = try settings.rate("rate-limit", default: nil, spelled: "100/s or 600/min")
        rateBurst = settings.source.text("rate-burst") == nil
            ? nil : try settings.integer("rate-burst", default: 1, in: 1...1_000_000)
        authFailureRate = try settings.rate(
            "auth-failure-limit", default: 2, offAllowed: true, spelled: "2/s, 60/min or off")
        insecureNoAuth = try settings.bool("insecure-no-auth")
        devKey = try settings.bool("dev-key")
        let sources = [jwksFile, jwksURL, oidcIssuer].compactMap { $0 }
        guard sources.count <= 1 else {
            throw ConfigurationError("give at most one of --jwks-file, --jwks-url and --oidc-issuer")
        }
        for (flag, url) in [("--jwks-url", jwksURL), ("--oidc-issuer", oidcIssuer)] {
            if let url, let problem = JWKSLocation.fetchProblem(url) { throw ConfigurationError("\(flag): \(problem)") }
        }
        if insecureNoAuth, !listen.isLoopback {
            throw ConfigurationError(
                "--insecure-no-auth only works on a loopback address (127.0.0.1, ::1, localhost), not \(listen.host)")
        }
    }

}

/// Everything `statefn serve` runs with.
public struct ServeConfiguration: Sendable {
    public var listen: ListenAddress
    public var functionsDirectory: String
    /// The account workers run as when statefn runs as root (DESIGN.md section 10).
    public var workerUser: String
    /// Whether `workerUser` was asked for (a flag or STATEFN_WORKER_USER) rather than the default.
    public var workerUserGiven: Bool
    public var database: DatabaseSettings
    public var auth: AuthSettings
    public var maxBodyBytes: Int
    /// A request head must arrive whole within this long (slow clients); zero turns it off.
    public var headerTimeout: Duration
    /// Connections one client address may hold at once; 0 for no limit.
    public var maxConnectionsPerAddress: Int
    public var httpThreads: Int
    public var gracePeriod: Duration
    public var commits: CommitterConfiguration
    public var outbox: OutboxConfiguration
    public var feed: EventFeedConfiguration
    public var pollOnly: Bool
    public var logLevel: Logger.Level
    /// nil: JSON when stderr is not a terminal, text when it is.
    public var logFormat: LogFormat?

    public init(_ source: ConfigurationSource) throws(ConfigurationError) {
        let settings = SettingsReader(source)
        let listenText = source.text("listen")
        listen = try ListenAddress(listenText?.text ?? "127.0.0.1:8080", origin: listenText?.origin ?? "--listen")
        functionsDirectory = settings.string("functions", default: "functions")
        let user = source.text("worker-user")
        workerUser = user?.text ?? "statefn-worker"
        workerUserGiven = user != nil
        // useradd's rule for a portable account name.
        let bytes = Array(workerUser.utf8)
        let nameByte = { (byte: UInt8) in
            (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte) || byte == 0x5F || byte == 0x2D
        }
        guard let first = bytes.first, (0x61...0x7A).contains(first) || first == 0x5F, bytes.count <= 32,
            bytes.allSatisfy(nameByte), workerUser != "root"
        else {
            throw ConfigurationError(
                "\(user?.origin ?? "--worker-user") must be an unprivileged account name ([a-z_][a-z0-9_-]*, at most"
                    + " 32 bytes, not root), got \"\(workerUser)\"")
        }
        database = try DatabaseSettings(settings)
        auth = try AuthSettings(settings, listen: listen)
        maxBodyBytes = try settings.integer("max-body-bytes", default: 1 << 20, in: 1...(1 << 30))
        httpThreads = try settings.integer("http-threads", default: 4, in: 1...256)
        headerTimeout = try settings.duration(
            "header-timeout", default: .seconds(30), from: .zero, to: .seconds(3600), bareUnit: .seconds(1))
        maxConnectionsPerAddress = try settings.integer("max-connections-per-address", default: 256, in: 0...100_000)
        gracePeriod = try settings.duration(
            "grace-period", default: .seconds(10), from: .zero, to: .seconds(3600), bareUnit: .seconds(1))

        commits = CommitterConfiguration()
        commits.conflictBudget = try settings.duration(
            "conflict-budget", default: .seconds(2), from: .zero, to: .seconds(600))
        commits.cacheBytes = try settings.integer("cache-bytes", default: 64 << 20, in: 0...(1 << 40))
        commits.commitLanes = try settings.integer("commit-lanes", default: 1, in: 1...64)
        commits.idempotencyTTL = try settings.duration(
            "idempotency-ttl", default: .seconds(86_400), from: .seconds(1), to: .seconds(365 * 86_400))
        commits.idempotencyWait = try settings.duration(
            "idempotency-wait", default: .seconds(10), from: .zero, to: .seconds(3600))

        outbox = OutboxConfiguration()
        outbox.pollInterval = try settings.duration(
            "outbox-poll", default: outbox.pollInterval, from: .milliseconds(10), to: .seconds(60))
        outbox.maxAttempts = try settings.integer("outbox-max-attempts", default: outbox.maxAttempts, in: 1...1000)
        outbox.lease = try settings.duration("outbox-lease", default: outbox.lease, from: .seconds(1), to: .seconds(86_400))
        feed = EventFeedConfiguration()
        feed.pollInterval = try settings.duration(
            "feed-poll", default: feed.pollInterval, from: .milliseconds(10), to: .seconds(60))
        feed.maxSubscribers = try settings.integer("max-subscribers", default: feed.maxSubscribers, in: 0...100_000)
        feed.heartbeat = try settings.duration("sse-heartbeat", default: feed.heartbeat, from: .seconds(1), to: .seconds(3600))
        pollOnly = try settings.bool("poll-only")

        logLevel = try settings.choice(
            "log-level", default: .info, Logger.Level.allCases.map { ($0.rawValue, $0) })
        logFormat = try settings.choice(
            "log-format", default: nil, [("json", LogFormat.json), ("text", LogFormat.text), ("auto", nil)])

        // An effect whose row outlives its claim (its dispatcher died after the commit) runs again once the lease
        // ends, and must find its answer under its key then.
        guard commits.idempotencyTTL > outbox.lease else {
            throw ConfigurationError(
                "--idempotency-ttl (\(DurationText.format(commits.idempotencyTTL))) must be longer than --outbox-lease"
                    + " (\(DurationText.format(outbox.lease))): an effect re-run after its lease must still find its"
                    + " stored answer")
        }
    }
}
