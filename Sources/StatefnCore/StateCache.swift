// The last committed snapshot of recently used entities, so a command on a warm entity skips its SELECT. The cache
// only ever saves a read: the Committer never acknowledges anything on the strength of an entry (a stale entry costs
// a lost compare-and-set, or a version check, and a reload). Bounded by entries and by bytes.
import Synchronization

final class StateCache: Sendable {
    private struct Entry {
        var snapshot: EntitySnapshot
        var cost: Int
    }
    private struct Contents {
        var entries: [EntityKey: Entry] = [:]
        var bytes = 0
    }
    private let contents = Mutex(Contents())
    private let capacity: Int
    private let byteBudget: Int

    /// `capacity` entries and `byteBudget` bytes at most; either 0 turns the cache off.
    init(capacity: Int, byteBudget: Int) {
        self.capacity = capacity
        self.byteBudget = byteBudget
    }

    func get(_ key: EntityKey) -> EntitySnapshot? { contents.withLock { $0.entries[key]?.snapshot } }

    /// Keeps `snapshot`, whose state encodes to `encodedBytes`. A snapshot over a quarter of the budget is not
    /// kept: one huge entity would otherwise push out everything else.
    func put(_ key: EntityKey, _ snapshot: EntitySnapshot, encodedBytes: Int) {
        // In memory a JSON tree takes more than its text; twice the text plus the key is a fair, cheap guess.
        let cost = 2 * encodedBytes + key.function.utf8.count + key.entity.utf8.count + 96
        guard capacity > 0, byteBudget > 0, cost <= byteBudget / 4 else {
            remove(key)
            return
        }
        contents.withLock { contents in
            if let old = contents.entries.removeValue(forKey: key) { contents.bytes -= old.cost }
            if contents.entries.count >= capacity || contents.bytes + cost > byteBudget {
                // Past a bound, drop arbitrary entries down to three quarters of it: cheap, bounded, and any
                // entry can be read again.
                let targetCount = capacity * 3 / 4
                let targetBytes = byteBudget * 3 / 4 - cost
                var victims: [EntityKey] = []
                var count = contents.entries.count
                var bytes = contents.bytes
                for (victim, entry) in contents.entries where count > targetCount || bytes > targetBytes {
                    victims.append(victim)
                    count -= 1
                    bytes -= entry.cost
                }
                for victim in victims { contents.entries[victim] = nil }
                contents.bytes = bytes
            }
            contents.entries[key] = Entry(snapshot: snapshot, cost: cost)
            contents.bytes += cost
        }
    }

    func remove(_ key: EntityKey) {
        contents.withLock { contents in
            if let old = contents.entries.removeValue(forKey: key) { contents.bytes -= old.cost }
        }
    }

    /// Entries and estimated bytes held, for tests and the functions listing.
    var usage: (entries: Int, bytes: Int) { contents.withLock { ($0.entries.count, $0.bytes) } }
}
