// Runs the PostgreSQL server tools (initdb, pg_ctl, useradd) as child processes and captures what they print,
// so a failure can say why. Start-up only; never on the request path.
import CLinux
import Foundation
import StatefnText

struct ServerCommand {
    /// The exit status (128 + signal if killed) and everything the command printed on stdout and stderr.
    struct Outcome {
        var status: Int32
        var output: String
        var succeeded: Bool { status == 0 }
    }

    var arguments: [String]

    /// Runs `arguments` as `account` (through `runuser`) when one is given, else as ourselves.
    init(_ arguments: [String], as account: ServerAccount?) {
        if let account {
            self.arguments = [ServerCommand.runuser, "-u", account.name, "--"] + arguments
        } else {
            self.arguments = arguments
        }
    }

    private static let runuser = systemTool("runuser")

    /// A root tool's absolute path (Process does not search PATH).
    static func systemTool(_ name: String) -> String {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map { "\($0)/\(name)" }.first { access($0, X_OK) == 0 }
            ?? "/usr/sbin/\(name)"
    }

    /// Spawns the command with stdin from /dev/null and output to a temporary file, then waits for it. A file, not
    /// a pipe: `pg_ctl start` leaves a server running, and nothing must wait for that server to close it. Plain
    /// waitpid, not Foundation's Process, which reaps children through GCD and stalls when its threads are busy.
    /// posix_spawn, waitpid.
    func run() throws(PostgresError) -> Outcome {
        var template = Array("/tmp/statefn-command-XXXXXX".utf8CString)
        let outputFD = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard outputFD >= 0 else { throw failure("cannot create a temporary file: \(Self.errnoText())") }
        // Only the child's stdout and stderr should hold it, not every other child we spawn.
        _ = fcntl(outputFD, F_SETFD, FD_CLOEXEC)
        let outputPath = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer {
            close(outputFD)
            unlink(outputPath)
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 1)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 2)
        // Our sockets and files must not live on in a long-running server.
        clinux_spawn_addclosefrom(&actions, 3)
        // The server's account may not be allowed into our working directory.
        clinux_spawn_addchdir(&actions, "/")

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t()
        let spawnError = posix_spawn(&pid, arguments[0], &actions, nil, argv, environ)
        guard spawnError == 0 else {
            throw failure("cannot run \(arguments[0]): \(String(cString: strerror(spawnError)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        let exitStatus = clinux_wait_shell_status(status)
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return Outcome(status: exitStatus, output: output.trimmingSuffix(while: \.isNewline))
    }

    /// Runs the command and throws, with its output, unless it exits 0.
    @discardableResult
    func check(_ code: PostgresError.Code = .invalidConfiguration) throws(PostgresError) -> Outcome {
        let outcome = try run()
        guard outcome.succeeded else {
            throw PostgresError(
                code: code, detail: "\(commandLine) exited with status \(outcome.status): \(outcome.output)")
        }
        return outcome
    }

    private var commandLine: String { arguments.joined(separator: " ") }

    private func failure(_ message: String) -> PostgresError {
        PostgresError(code: .invalidConfiguration, detail: message)
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }
}

/// glibc's posix_spawn extensions (2.29+, 2.34+), found at run time: Swift's Glibc module hides them behind
/// _GNU_SOURCE. Without them the child keeps our working directory and inherited descriptors.
/// An account of this system: the unprivileged one the server runs as when we are root, and the one function
/// workers run as (DESIGN.md section 10).
public struct ServerAccount: Sendable, Equatable {
    public var name: String
    public var uid: uid_t
    public var gid: gid_t

    /// The account named `name`, if it exists. getpwnam_r.
    public static func named(_ name: String) -> ServerAccount? {
        lookUp { getpwnam_r(name, &$0, $1, $2, &$3) }
    }

    /// The account with `uid`, if it exists. getpwuid_r.
    public static func withID(_ uid: uid_t) -> ServerAccount? {
        lookUp { getpwuid_r(uid, &$0, $1, $2, &$3) }
    }

    /// The system account `name`, made (no home, no login shell, a group of its own) if it does not exist.
    /// Returns it and whether it was made now. Only root can make one.
    public static func ensureSystem(_ name: String) throws(PostgresError) -> (account: ServerAccount, created: Bool) {
        if let existing = named(name) { return (existing, false) }
        try ServerCommand(
            [
                ServerCommand.systemTool("useradd"), "--system", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", "--user-group", name,
            ], as: nil
        ).check()
        guard let created = named(name) else {
            throw PostgresError(code: .invalidConfiguration, detail: "useradd did not create the account \(name)")
        }
        return (created, true)
    }

    /// The first directory on the way to `path` (and `path` itself, when `including`) that this account may not
    /// pass through, or nil. We are root, so access() would answer for us, not for it: this reads the permission
    /// bits instead (supplementary groups are not considered).
    public func firstUnsearchableDirectory(on path: String, including: Bool = false) -> String? {
        var prefix = ""
        let components = path.split(separator: "/")
        for component in including ? components[...] : components.dropLast() {
            prefix += "/" + component
            var info = stat()
            guard stat(prefix, &info) == 0 else { return prefix }
            let bit = info.st_uid == uid ? S_IXUSR : info.st_gid == gid ? S_IXGRP : S_IXOTH
            if info.st_mode & bit == 0 { return prefix }
        }
        return nil
    }

    private static func lookUp(
        _ call: (inout passwd, UnsafeMutablePointer<CChar>, Int, inout UnsafeMutablePointer<passwd>?) -> Int32
    ) -> ServerAccount? {
        var entry = passwd()
        var found: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        return buffer.withUnsafeMutableBufferPointer { strings in
            // The entry's strings live in `strings`: copy them out before it goes.
            guard call(&entry, strings.baseAddress!, strings.count, &found) == 0, found != nil,
                let name = entry.pw_name
            else { return nil }
            return ServerAccount(name: String(cString: name), uid: entry.pw_uid, gid: entry.pw_gid)
        }
    }
}
