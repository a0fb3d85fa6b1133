// A private PostgreSQL cluster run from the installed server binaries: `statefn serve` uses it when there is no
// DATABASE_URL, and the tests start throwaway ones. It listens on a Unix socket only; as root it runs the server
// as an unprivileged account, because PostgreSQL refuses to run as root.
import CLibPQ
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A private PostgreSQL cluster started from the installed server binaries (initdb, pg_ctl), listening only on a
/// Unix socket. Used by `statefn serve` without DATABASE_URL, and by the tests. As root it runs the server as an
/// unprivileged user, because PostgreSQL refuses to run as root.
public final class EmbeddedPostgres: Sendable {
    private let directory: String
    private let logger: Logger
    private let flushesToDisk: Bool
    private static let port = 5432
    /// sockaddr_un's path holds 108 bytes with the terminating NUL.
    private static let maxSocketPathBytes = 107

    /// `directory` holds the cluster (created on first start, kept across restarts). `flushesToDisk` false turns
    /// fsync off: for the tests' throwaway clusters only, where an operating-system crash loses nothing of value
    /// and a slow disk would otherwise stall every test at once. A server crash (the tests' restarts) still loses
    /// nothing committed, because the kernel holds the written pages.
    public init(directory: String, logger: Logger, flushesToDisk: Bool = true) {
        self.directory = URL(fileURLWithPath: directory).standardizedFileURL.path
        self.flushesToDisk = flushesToDisk
        var logger = logger
        logger[metadataKey: "pg_directory"] = "\(self.directory)"
        self.logger = logger
    }

    /// Where the server writes its log: beside the cluster, so it survives a re-initialised cluster.
    public var logFile: String { parentDirectory + "/postgres.log" }

    /// Starts the cluster (initdb first if needed) and waits until it accepts connections.
    /// Returns a libpq connection string for it.
    public func start() throws(PostgresError) -> String {
        let binaries = try ServerBinaries.find()
        let account = try serverAccount()
        try prepareClusterDirectory(for: account)
        let fresh = !FileManager.default.fileExists(atPath: directory + "/PG_VERSION")
        let password = try clusterPassword(fresh: fresh)
        if fresh {
            try initialize(with: binaries, as: account, password: password.value)
            try adoptPendingPassword()
        }
        // A cluster made before passwords (trust on its socket) gets one: started as it was, given the password
        // over that one trusted connection, then switched to scram-sha-256. Until the role has it, the password
        // waits in `<file>.new`, so a start that fails half way tries again rather than locking the cluster.
        let setPassword = !fresh && password.pending
        let socketDirectory = try prepareSocketDirectory(for: account)
        try writeSettings(socketDirectory: socketDirectory, account: account, trust: setPassword)
        let socket = "host=\(Self.conninfoQuoted(socketDirectory)) port=\(Self.port) user=statefn dbname=postgres"
        let conninfo = socket + " passfile=\(Self.conninfoQuoted(passwordFile))"

        let pgCtl = [binaries.pgCtl, "-D", directory, "-l", logFile, "-w", "-t", "60"]
        if try ServerCommand([binaries.pgCtl, "-D", directory, "status"], as: account).run().succeeded {
            // Left running by an earlier statefn: reuse it if it listens where we expect, else restart it.
            if PQping(socket) == PQPING_OK {
                logger.notice("reusing the PostgreSQL server already running on this cluster")
                // It reads the pg_hba.conf just written (passwords only) from its next connection on.
                try ServerCommand([binaries.pgCtl, "-D", directory, "reload"], as: account).check()
            } else {
                try withServerLog { () throws(PostgresError) in
                    try ServerCommand(pgCtl + ["-m", "fast", "restart"], as: account).check(.connectionFailed)
                }
            }
        } else {
            try withServerLog { () throws(PostgresError) in
                try ServerCommand(pgCtl + ["start"], as: account).check(.connectionFailed)
            }
        }
        if setPassword {
            try setRolePassword(password.value, conninfo: socket)
            try adoptPendingPassword()
            try writeSettings(socketDirectory: socketDirectory, account: account, trust: false)
            try ServerCommand([binaries.pgCtl, "-D", directory, "reload"], as: account).check()
            logger.notice("the embedded cluster now takes only password (scram-sha-256) logins")
        }
        logger.notice("started embedded PostgreSQL", metadata: ["socket": "\(socketDirectory)", "log": "\(logFile)"])
        return conninfo
    }

    /// The cluster's password, in a libpq password file (`*:*:*:*:<password>`, mode 0600, ours alone) beside it:
    /// whoever can read that file can log in, and no one else can, over the socket or otherwise.
    public var passwordFile: String { parentDirectory + "/pg-password" }

    /// The cluster's password: from the password file, or one that waits in `<file>.new` (made now if there is
    /// none: for a fresh cluster, or an old one that had trust instead) until the role has it (`pending`).
    private func clusterPassword(fresh: Bool) throws(PostgresError) -> (value: String, pending: Bool) {
        func read(_ path: String) -> String? {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8),
                let line = text.split(separator: "\n").first, line.hasPrefix("*:*:*:*:"), line.count > 8
            else { return nil }
            chmod(path, 0o600)
            return String(line.dropFirst(8))
        }
        if !fresh, let value = read(passwordFile) { return (value, false) }
        if let value = read(passwordFile + ".new") { return (value, true) }
        var generator = SystemRandomNumberGenerator()
        let value = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        try writePrivate("*:*:*:*:\(value)\n", to: passwordFile + ".new", owner: nil)
        return (value, true)
    }

    /// The role has the pending password: it becomes the password file.
    private func adoptPendingPassword() throws(PostgresError) {
        guard rename(passwordFile + ".new", passwordFile) == 0 else {
            throw Self.setupFailure("cannot move \(passwordFile).new to \(passwordFile): \(Self.errnoText())")
        }
    }

    /// Writes `text` to a new file at `path`, mode 0600, owned by `owner` (or by us); replaces what was there.
    private func writePrivate(_ text: String, to path: String, owner: ServerAccount?) throws(PostgresError) {
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Self.setupFailure("cannot create \(path): \(Self.errnoText())") }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count,
            owner.map({ fchown(fd, $0.uid, $0.gid) == 0 }) ?? true
        else { throw Self.setupFailure("cannot write \(path): \(Self.errnoText())") }
    }

    /// Gives the role its password over a connection the old trust rule still admits. The password is hex, so
    /// it needs no quoting beyond the literal's.
    private func setRolePassword(_ password: String, conninfo: String) throws(PostgresError) {
        let connection = PQconnectdb(conninfo)
        defer { PQfinish(connection) }
        guard PQstatus(connection) == CONNECTION_OK else {
            throw PostgresError(
                code: .connectionFailed,
                detail: "cannot connect to set the cluster's password: \(String(cString: PQerrorMessage(connection)))")
        }
        let result = PQexec(connection, "SET password_encryption = 'scram-sha-256'; ALTER ROLE statefn PASSWORD '\(password)'")
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COMMAND_OK else {
            throw PostgresError(
                code: .invalidConfiguration,
                detail: "cannot set the cluster's password: \(String(cString: PQerrorMessage(connection)))")
        }
    }

    /// Whether a server is running on this cluster now, so a short-lived command (`statefn keys`) that finds one
    /// running, a gateway's say, leaves it running.
    public var isRunning: Bool {
        guard FileManager.default.fileExists(atPath: directory + "/PG_VERSION"),
            let binaries = try? ServerBinaries.find()
        else { return false }
        let account = getuid() == 0 ? owner(of: directory) : nil
        return (try? ServerCommand([binaries.pgCtl, "-D", directory, "status"], as: account).run().succeeded) ?? false
    }

    /// Stops the cluster (fast shutdown) and waits for it to exit.
    public func stop() {
        guard FileManager.default.fileExists(atPath: directory + "/PG_VERSION"),
            let binaries = try? ServerBinaries.find()
        else { return }
        let account = getuid() == 0 ? owner(of: directory) : nil
        let command = ServerCommand(
            [binaries.pgCtl, "-D", directory, "-m", "fast", "-w", "-t", "60", "stop"], as: account)
        do {
            let outcome = try command.run()
            if outcome.succeeded {
                logger.notice("stopped embedded PostgreSQL")
                // Leave nothing in /tmp; a socket directory inside the cluster stays with it.
                if !socketDirectory.hasPrefix(directory + "/") { rmdir(socketDirectory) }
            } else {
                logger.warning("pg_ctl stop failed", metadata: ["output": "\(outcome.output)"])
            }
        } catch {
            logger.warning("pg_ctl stop failed", metadata: ["error": "\(error.logDescription)"])
        }
    }

    private var parentDirectory: String { (directory as NSString).deletingLastPathComponent }

    /// Who runs the server: ourselves, or as root an unprivileged account (the cluster's owner, else `postgres`,
    /// else a `statefn` system account made for it).
    private func serverAccount() throws(PostgresError) -> ServerAccount? {
        guard getuid() == 0 else { return nil }
        if let existing = owner(of: directory), existing.uid != 0 { return existing }
        if let account = ServerAccount.named("postgres") { return account }
        let (account, created) = try ServerAccount.ensureSystem("statefn")
        if created { logger.notice("created the system account statefn to run PostgreSQL") }
        return account
    }

    private func owner(of path: String) -> ServerAccount? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return ServerAccount.withID(info.st_uid)
    }

    private func prepareClusterDirectory(for account: ServerAccount?) throws(PostgresError) {
        do {
            try FileManager.default.createDirectory(atPath: parentDirectory, withIntermediateDirectories: true)
        } catch {
            throw Self.setupFailure("cannot create \(parentDirectory): \(error)")
        }
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else {
            throw Self.setupFailure("cannot create \(directory): \(Self.errnoText())")
        }
        if let account {
            if let blocked = account.firstUnsearchableDirectory(on: directory) {
                throw Self.setupFailure(
                    "PostgreSQL runs as the user \(account.name), who cannot reach \(directory) because \(blocked) "
                        + "is not searchable by it: allow it (chmod o+x \(blocked)) or put the cluster elsewhere")
            }
            guard chown(directory, account.uid, account.gid) == 0 else {
                throw Self.setupFailure("cannot give \(directory) to \(account.name): \(Self.errnoText())")
            }
            // pg_ctl opens the log as the server's account, which may not write to our directory.
            let log = open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            guard log >= 0, fchown(log, account.uid, account.gid) == 0 else {
                if log >= 0 { close(log) }
                throw Self.setupFailure("cannot prepare the log file \(logFile): \(Self.errnoText())")
            }
            close(log)
        }
        // The server refuses a data directory that others can read.
        var info = stat()
        if stat(directory, &info) == 0, info.st_mode & 0o027 != 0 { chmod(directory, 0o700) }
    }

    private func initialize(with binaries: ServerBinaries, as account: ServerAccount?, password: String)
        throws(PostgresError)
    {
        logger.notice("creating a PostgreSQL cluster")
        // initdb runs as the server's account and reads the password from a file of its own, removed after.
        let passwordCopy = parentDirectory + "/.initdb-password"
        try writePrivate(password + "\n", to: passwordCopy, owner: account)
        defer { unlink(passwordCopy) }
        try ServerCommand(
            [
                binaries.initdb, "-D", directory, "--auth=scram-sha-256", "--pwfile=\(passwordCopy)",
                "--username=statefn", "--encoding=UTF8", "--locale=C",
            ], as: account
        ).check()
        // Our settings live in their own file, rewritten at every start; postgresql.conf stays the operator's.
        try append("\ninclude_if_exists = 'statefn.conf'\n", to: directory + "/postgresql.conf")
    }

    /// `<directory>/sock` if a socket path there fits in sockaddr_un, else a private directory under /tmp named
    /// after the cluster, so each cluster keeps one stable socket.
    private var socketDirectory: String {
        let inside = directory + "/sock"
        return (inside + "/.s.PGSQL.\(Self.port)").utf8.count <= Self.maxSocketPathBytes
            ? inside : "/tmp/statefn-pg-\(String(Self.fnv1a(directory), radix: 16))"
    }

    private func prepareSocketDirectory(for account: ServerAccount?) throws(PostgresError) -> String {
        let path = socketDirectory
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw Self.setupFailure("cannot create the socket directory \(path): \(Self.errnoText())")
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw Self.setupFailure("the socket directory \(path) is not a directory")
        }
        let ownerID = account?.uid ?? getuid()
        if info.st_uid != ownerID {
            guard let account, chown(path, account.uid, account.gid) == 0 else {
                throw Self.setupFailure("the socket directory \(path) belongs to another user")
            }
        }
        chmod(path, 0o700)
        return path
    }

    /// statefn.conf, and pg_hba.conf, which admits nothing but scram-sha-256 logins over the socket (or, with
    /// `trust`, the one start that gives an old cluster its password).
    private func writeSettings(socketDirectory: String, account: ServerAccount?, trust: Bool) throws(PostgresError) {
        let settings = """
            # Written by statefn at every start; put your own settings in postgresql.conf.
            listen_addresses = ''
            port = \(Self.port)
            unix_socket_directories = '\(Self.settingQuoted(socketDirectory))'
            max_connections = 200
            fsync = \(flushesToDisk ? "on" : "off")
            password_encryption = 'scram-sha-256'

            """
        let access = """
            # Written by statefn at every start: the socket only, and only with the password in \(passwordFile).
            local all all \(trust ? "trust" : "scram-sha-256")

            """
        for (name, text) in [("statefn.conf", settings), ("pg_hba.conf", access)] {
            let path = directory + "/" + name
            do {
                try text.write(toFile: path, atomically: false, encoding: .utf8)
            } catch {
                throw Self.setupFailure("cannot write \(path): \(error)")
            }
            if let account, chown(path, account.uid, account.gid) != 0 {
                throw Self.setupFailure("cannot give \(path) to \(account.name): \(Self.errnoText())")
            }
        }
    }

    private func append(_ text: String, to path: String) throws(PostgresError) {
        guard let file = FileHandle(forWritingAtPath: path) else {
            throw Self.setupFailure("cannot open \(path) for writing")
        }
        defer { try? file.close() }
        do {
            try file.seekToEnd()
            try file.write(contentsOf: Data(text.utf8))
        } catch {
            throw Self.setupFailure("cannot write \(path): \(error)")
        }
    }

    /// Adds the end of the server log to a failure: pg_ctl itself only says that the server did not start.
    private func withServerLog(_ body: () throws(PostgresError) -> Void) throws(PostgresError) {
        do {
            try body()
        } catch {
            var error = error
            let log = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
            error.detail += "\nserver log (\(logFile)):\n" + String(log.suffix(2000))
            throw error
        }
    }

    private static func setupFailure(_ detail: String) -> PostgresError {
        PostgresError(code: .invalidConfiguration, detail: detail)
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }

    /// A stable hash (Swift's `hashValue` changes between runs). FNV-1a, 64 bits.
    private static func fnv1a(_ text: String) -> UInt64 {
        text.utf8.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }

    /// A libpq conninfo value: single-quoted, with backslash escapes.
    static func conninfoQuoted(_ value: String) -> String {
        "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    /// The inside of a postgresql.conf string.
    private static func settingQuoted(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "''")
    }
}

/// The installed server tools: the newest /usr/lib/postgresql/<version>/bin, else whatever PATH has.
struct ServerBinaries {
    var initdb: String
    var pgCtl: String

    static func find() throws(PostgresError) -> ServerBinaries {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .sorted { versionNumbers($0).lexicographicallyPrecedes(versionNumbers($1)) }
        for version in versions.reversed() {
            let bin = "\(root)/\(version)/bin"
            if ["initdb", "pg_ctl", "postgres"].allSatisfy({ isExecutable("\(bin)/\($0)") }) {
                return ServerBinaries(initdb: "\(bin)/initdb", pgCtl: "\(bin)/pg_ctl")
            }
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        func onPath(_ name: String) -> String? {
            path.split(separator: ":").map { "\($0)/\(name)" }.first(where: isExecutable)
        }
        if let initdb = onPath("initdb"), let pgCtl = onPath("pg_ctl"), onPath("postgres") != nil {
            return ServerBinaries(initdb: initdb, pgCtl: pgCtl)
        }
        throw PostgresError(
            code: .invalidConfiguration,
            detail: "PostgreSQL server binaries not found; install the postgresql package")
    }

    private static func versionNumbers(_ name: String) -> [Int] {
        name.split(separator: ".").map { Int($0) ?? -1 }
    }

    private static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }
}
