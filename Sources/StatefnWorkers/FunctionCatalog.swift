// The functions directory as statefn sees it: which functions exist, where their executables are, and their
// manifests. Scanning never throws: a broken function is reported in `failures` and the others still load.
import Glibc
import StatefnJSON
import StatefnText

/// A function found in the functions directory.
public struct FunctionDefinition: Sendable, Hashable {
    public var name: String
    /// Absolute path of the executable (`functions/<name>` or `functions/<name>/handler`).
    public var executable: String
    /// The directory the worker runs in.
    public var workingDirectory: String
    public var manifest: FunctionManifest
    /// Which version of the code this is: the executable's inode, size and times (and, for a folder, its other
    /// files' times). A changed revision gets fresh workers, and the old ones drain.
    public var revision: String
    public init(
        name: String, executable: String, workingDirectory: String, manifest: FunctionManifest, revision: String = ""
    ) {
        self.name = name
        self.executable = executable
        self.workingDirectory = workingDirectory
        self.manifest = manifest
        self.revision = revision
    }
}

/// The result of scanning a functions directory.
public struct FunctionCatalog: Sendable, Equatable {
    public var functions: [String: FunctionDefinition]
    /// Functions that could not be loaded, with the reason (bad manifest, not executable, ...).
    public var failures: [String: String]
    public init(functions: [String: FunctionDefinition] = [:], failures: [String: String] = [:]) {
        self.functions = functions
        self.failures = failures
    }

    /// Scans `directory` for both layouts of DESIGN.md section 3. Names that are not valid function names
    /// (`[a-z][a-z0-9_-]{0,62}`, e.g. `_sdk`, `README.md`) are ignored.
    public static func scan(directory: String) -> FunctionCatalog {
        var catalog = FunctionCatalog()
        guard let root = absolutePath(directory), let entries = System.directoryEntries(root) else { return catalog }
        for name in entries where isFunctionName(name) {
            switch load(name: name, root: root) {
            case .success(let definition): catalog.functions[name] = definition
            case .failure(let error): catalog.failures[name] = error.detail
            }
        }
        return catalog
    }

    /// `[a-z][a-z0-9_-]{0,62}` (DESIGN.md section 2).
    public static func isFunctionName(_ name: String) -> Bool { Names.isFunctionName(name) }

    private static func load(name: String, root: String) -> Result<FunctionDefinition, WorkerError> {
        let path = root + "/" + name
        guard let entry = FileStatus(path) else { return .failure(WorkerError(.spawnFailed, "cannot stat \(path)")) }
        let executable: String
        let workingDirectory: String
        let manifestPath: String
        if entry.isDirectory {
            executable = path + "/handler"
            workingDirectory = path
            manifestPath = path + "/function.json"
            guard let handler = FileStatus(executable), handler.isRegularFile else {
                return .failure(WorkerError(.spawnFailed, "folder \(path) has no handler file"))
            }
            guard handler.isExecutable else {
                return .failure(WorkerError(.spawnFailed, "\(executable) is not executable (chmod +x)"))
            }
        } else {
            executable = path
            workingDirectory = root
            manifestPath = path + ".json"
            guard entry.isRegularFile, entry.isExecutable else {
                return .failure(WorkerError(.spawnFailed, "\(path) is not an executable file (chmod +x)"))
            }
        }
        var manifest = FunctionManifest()
        if FileStatus(manifestPath) != nil {
            do {
                manifest = try FunctionManifest.parse(try readManifest(manifestPath))
            } catch {
                return .failure(WorkerError(.invalidManifest, "\(manifestPath): \(error.detail)"))
            }
        }
        var revision = FileStatus(executable)?.revision ?? ""
        if entry.isDirectory {
            // A handler that imports its neighbours changes when they do.
            for other in System.directoryEntries(path) ?? [] where other != "handler" {
                if let status = FileStatus(path + "/" + other), status.isRegularFile {
                    revision += "|" + status.revision
                }
            }
        }
        return .success(
            FunctionDefinition(
                name: name, executable: executable, workingDirectory: workingDirectory, manifest: manifest,
                revision: revision))
    }

    private static func readManifest(_ path: String) throws(WorkerError) -> JSONValue {
        guard let bytes = readFile(path, limit: 1 << 20) else {
            throw WorkerError(.invalidManifest, "cannot read the file, or it is over 1 MiB")
        }
        do {
            return try JSONValue.parse(bytes, limits: JSONLimits(maxBytes: 1 << 20))
        } catch {
            throw WorkerError(.invalidManifest, "not valid JSON: \(error)")
        }
    }
}

/// What `stat(2)` says about a path, following symlinks.
private struct FileStatus {
    let mode: mode_t
    /// Inode, size, and modification and change times in nanoseconds: a file replaced by rename, or rewritten in
    /// place, or made executable, reads differently.
    let revision: String
    init?(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        mode = info.st_mode
        revision =
            "\(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec):"
            + "\(info.st_ctim.tv_sec).\(info.st_ctim.tv_nsec)"
    }
    var isDirectory: Bool { mode & S_IFMT == S_IFDIR }
    var isRegularFile: Bool { mode & S_IFMT == S_IFREG }
    var isExecutable: Bool { mode & 0o111 != 0 }
}


/// An absolute, symlink-free path; wraps realpath(3).
private func absolutePath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}
