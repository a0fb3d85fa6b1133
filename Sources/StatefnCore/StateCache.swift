// The last committed snapshot of recently used entities, so a command on a warm entity skips its SELECT. A stale
// entry (another gateway wrote since) only costs a lost CAS and a reload, never a wrong commit.
import Synchronization

final class StateCache: Sendable {
    private let entries = Mutex<[EntityKey: EntitySnapshot]>([:])
    private let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    func get(_ key: EntityKey) -> EntitySnapshot? { entries.withLock { $0[key] } }

    func put(_ key: EntityKey, _ snapshot: EntitySnapshot) {
        guard capacity > 0 else { return }
        entries.withLock { entries in
            // Past capacity, drop an arbitrary half: cheap, bounded, and any entry can be read again.
            if entries.count >= capacity, entries[key] == nil {
                for victim in entries.keys.prefix(entries.count / 2) { entries[victim] = nil }
            }
            entries[key] = snapshot
        }
    }

    func remove(_ key: EntityKey) { _ = entries.withLock { $0.removeValue(forKey: key) } }
}
