// The process table as /proc shows it (proc(5)), for tests that check which processes exist: workers, their
// descendants, the embedded postmaster. Read from /proc/<pid>/stat, which every Linux kernel has, rather than
// /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN), whose absence would make "no children" pass any test.
import Foundation

/// One process. `command` is what exec made it: a script that exec'd into `sleep` shows as `sleep`.
public struct ProcessEntry: Sendable, Equatable, CustomStringConvertible {
    public let pid: Int32
    public let command: String
    /// `Z` for a zombie.
    public let state: Character
    public let ppid: Int32
    public let pgid: Int32
    /// Clock ticks after boot: tells a process from a later one that got its pid.
    public let startTicks: UInt64

    public var description: String { "\(pid) (\(command)) \(state) ppid \(ppid) pgid \(pgid)" }

    public init?(pid: Int32) {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
        let stat = String(decoding: data, as: UTF8.self)
        guard let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name, from field 3: state, ppid, pgrp, session, ..., starttime (field 22).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let ppid = Int32(fields[1]),
            let pgid = Int32(fields[2]), let start = UInt64(fields[19])
        else { return nil }
        self.pid = pid
        self.command = String(stat[stat.index(after: open)..<close])
        self.state = state
        self.ppid = ppid
        self.pgid = pgid
        self.startTicks = start
    }

    /// Running: it exists and is not a zombie waiting to be reaped.
    public var isRunning: Bool { state != "Z" }
}

/// Every process, zombies included.
public func processTable() -> [ProcessEntry] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.compactMap { ProcessEntry(pid: $0) }
}

/// Whether `pid` is a running process (a zombie is not: it only waits for its parent).
public func isRunning(_ pid: Int32) -> Bool { ProcessEntry(pid: pid)?.isRunning ?? false }
