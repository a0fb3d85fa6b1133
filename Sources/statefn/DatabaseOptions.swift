// Where the database is: DATABASE_URL, or else the embedded PostgreSQL cluster under --data-dir.
import ArgumentParser
import Logging
import StatefnCore
import StatefnPostgres

#if canImport(Glibc)
    import Glibc
#endif

struct DatabaseOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Directory for local data; without DATABASE_URL the embedded PostgreSQL cluster lives in <data-dir>/pg"
                + " (env STATEFN_DATA_DIR; default .statefn).", valueName: "dir"))
    var dataDir: String?

    @Option(
        help: ArgumentHelp(
            "Directory of NNNN_name.sql migrations (env STATEFN_MIGRATIONS_DIR; default: ./migrations, or the one"
                + " installed beside the binary).", valueName: "dir"))
    var migrationsDir: String?

    @Option(
        help: ArgumentHelp(
            "Database connections in this replica's pool (env STATEFN_DB_POOL_SIZE; default 16). On CockroachDB,"
                + " keep the sum over all replicas near 4 per vCPU of the cluster: more connections only queue.",
            valueName: "n"))
    var dbPoolSize: String?

    var flags: [String: String?] {
        ["data-dir": dataDir, "migrations-dir": migrationsDir, "db-pool-size": dbPoolSize]
    }

    /// The settings in force: these flags, else their variables, else the defaults.
    func settings() throws -> DatabaseSettings {
        try configuring { try DatabaseSettings(SettingsReader(configurationSource(flags))) }
    }
}

extension DatabaseSettings {
    /// The database to use, starting the embedded cluster when DATABASE_URL is not set.
    /// With `leaveRunning`, an embedded cluster that was already running (a gateway's) is returned as nil, so the
    /// caller does not stop it.
    func open(logger: Logger, leaveRunning: Bool = false) throws -> (config: PostgresConfig, embedded: EmbeddedPostgres?) {
        if let url { return (try PostgresConfig(url), nil) }
        let directory = clusterDirectory
        let embedded = EmbeddedPostgres(directory: directory, logger: logger)
        if leaveRunning, embedded.isRunning {
            return (try PostgresConfig(try embedded.start()), nil)
        }
        let conninfo = try embedded.start()
        logger.info(
            "embedded PostgreSQL running", metadata: ["directory": "\(directory)", "conninfo": "\(conninfo)"])
        return (try PostgresConfig(conninfo), embedded)
    }

    /// `<data-dir>/pg`, unless we are root and PostgreSQL's unprivileged account could not reach it (a checkout
    /// under /root, say): then /var/lib/statefn/<data-dir path>/pg, so the cluster still survives restarts.
    var clusterDirectory: String {
        let dataDirectory = absolutePath(dataDirectory)
        guard getuid() == 0, !othersCanTraverse(dataDirectory) else { return dataDirectory + "/pg" }
        return systemDirectory(for: dataDirectory, "pg")
    }

    func migrator() throws -> Migrator {
        if let migrationsDirectory { return try Migrator(directory: migrationsDirectory) }
        guard let directory = installedPath("migrations", isDirectory: true) else {
            throw ValidationError("no migrations directory found; pass --migrations-dir")
        }
        return try Migrator(directory: directory)
    }
}

/// A file or directory statefn ships (migrations, the OpenAPI document): ./NAME, then <prefix>/share/statefn/NAME
/// for an installed binary (<prefix>/bin/statefn), then the source tree the binary was built in
/// (.build/<triple>/<config>/statefn).
func installedPath(_ name: String, isDirectory wanted: Bool) -> String? {
    var candidates = [name]
    if let executable = executablePath() {
        var dir = executable
        for level in 0..<5 {
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
            if level == 1 { candidates.append(dir + "/share/statefn/" + name) }
            candidates.append(dir + "/" + name)
        }
    }
    return candidates.first { path in
        var info = stat()
        return stat(path, &info) == 0 && ((info.st_mode & S_IFMT) == S_IFDIR) == wanted
    }
}

func absolutePath(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
    guard getcwd(&buffer, buffer.count) != nil else { return path }
    let cwd = string(fromNulTerminated: buffer)
    return path == "." ? cwd : cwd + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
}

/// `/var/lib/statefn/<data-dir path>/<name>`: where something that belongs under `<data-dir>` goes when the account
/// that must reach it cannot pass through to `<data-dir>` (a checkout under /root, say).
func systemDirectory(for dataDirectory: String, _ name: String) -> String {
    "/var/lib/statefn/\(dataDirectory.split(separator: "/").joined(separator: "_"))/\(name)"
}

/// Whether every existing directory on the way to `path` lets other users through (o+x).
func othersCanTraverse(_ path: String) -> Bool {
    var prefix = ""
    for component in path.split(separator: "/") {
        prefix += "/" + component
        var info = stat()
        guard stat(prefix, &info) == 0 else { return true }  // what does not exist yet is created traversable
        if info.st_mode & S_IXOTH == 0 { return false }
    }
    return true
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

func executablePath() -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    return string(fromNulTerminated: buffer)
}

func string(fromNulTerminated buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
