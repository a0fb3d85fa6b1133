// Serial, in-order execution per entity within this gateway (DESIGN.md section 4). Swift actors are reentrant at
// every await, so an actor alone would let a second command start while the first waits on its worker; the
// mailbox holds the entity for the whole command instead.
import Synchronization

/// Identifies an entity: its function and id. Equal and hashed by UTF-8 bytes, as PostgreSQL compares them:
/// Swift's `String ==` is canonical equivalence, under which `"é"` (U+00E9) and `"e\u{301}"` are one key for
/// two rows (DESIGN.md section 9).
public struct EntityKey: Hashable, Sendable {
    public var function: String
    public var entity: String
    public init(function: String, entity: String) {
        self.function = function
        self.entity = entity
    }

    public static func == (a: EntityKey, b: EntityKey) -> Bool {
        a.function.utf8.elementsEqual(b.function.utf8) && a.entity.utf8.elementsEqual(b.entity.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        for byte in function.utf8 { hasher.combine(byte) }
        hasher.combine(0xFF as UInt8)  // not a UTF-8 byte: separates the two parts
        for byte in entity.utf8 { hasher.combine(byte) }
    }
}

final class EntityMailboxes: Sendable {
    private let boxes = Mutex<[EntityKey: MailboxStateMachine<CheckedContinuation<Void, Never>>]>([:])

    /// Runs `body` when every earlier command for `key` has finished, and before any later one starts.
    func run<T: Sendable>(_ key: EntityKey, _ body: () async throws -> T) async throws -> T {
        await acquire(key)
        defer { release(key) }
        return try await body()
    }

    /// How many commands wait behind the running one, across all entities.
    var queuedCount: Int { boxes.withLock { $0.values.reduce(0) { $0 + $1.queued } } }

    private func acquire(_ key: EntityKey) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let action = boxes.withLock { boxes in
                boxes[key, default: MailboxStateMachine()].acquire(continuation)
            }
            if case .run = action { continuation.resume() }
        }
    }

    private func release(_ key: EntityKey) {
        let action = boxes.withLock { boxes -> MailboxStateMachine<CheckedContinuation<Void, Never>>.ReleaseAction in
            let action = boxes[key]!.release()
            if case .idle = action { boxes[key] = nil }
            return action
        }
        if case .resume(let next) = action { next.resume() }
    }
}
