// Serial, in-order execution per entity within this gateway (DESIGN.md section 4). Swift actors are reentrant at
// every await, so an actor alone would let a second command start while the first waits on its worker; the
// mailbox holds the entity for the whole command instead.
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

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

    /// The same bytes, not Swift's canonical equivalence (DESIGN.md section 9).
    public static func == (a: EntityKey, b: EntityKey) -> Bool {
        Self.sameBytes(a.entity, b.entity) && Self.sameBytes(a.function, b.function)
    }

    public func hash(into hasher: inout Hasher) {
        Self.combine(function, into: &hasher)
        hasher.combine(0xFF as UInt8)  // not a UTF-8 byte: separates the two parts
        Self.combine(entity, into: &hasher)
    }

    /// Every map of entities hashes and compares keys on each request: by the buffer where there is one (a native
    /// string always has one), byte by byte otherwise.
    private static func combine(_ text: String, into hasher: inout Hasher) {
        let done: Void? = text.utf8.withContiguousStorageIfAvailable {
            hasher.combine(bytes: UnsafeRawBufferPointer($0))
        }
        if done == nil { Array(text.utf8).withUnsafeBytes { hasher.combine(bytes: $0) } }
    }

    private static func sameBytes(_ a: String, _ b: String) -> Bool {
        let fast = a.utf8.withContiguousStorageIfAvailable { x in
            b.utf8.withContiguousStorageIfAvailable { y in
                x.count == y.count && (x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0)
            }
        }
        return (fast ?? nil) ?? a.utf8.elementsEqual(b.utf8)
    }
}

/// One mailbox per busy entity. The command that finds the entity free leads: it may take the commands queued
/// behind it (those `joins` accepts beside it, in arrival order, up to the first it does not) into one batch, which
/// `body` runs one after another and commits once; each of them gets its own answer from that batch. Then the entity
/// passes to the next command queued, which leads the next batch.
final class EntityMailboxes<Member: Sendable, Answer: Sendable>: Sendable {
    private enum Turn: Sendable {
        case lead
        case answered(Answer)
    }

    private struct Waiter: Sendable {
        var member: Member
        var continuation: CheckedContinuation<Turn, Never>
    }

    private let boxes = Mutex<[EntityKey: MailboxStateMachine<Waiter>]>([:])

    /// Runs `member` when every earlier command for `key` has finished, and before any later one starts: in a batch
    /// of its own, led by it (with up to `maxBatch - 1` queued members that `joins(member, queued)` accepts), or in
    /// the batch another member leads. `body` returns one answer per member, in order.
    func run(
        _ key: EntityKey, _ member: Member, maxBatch: Int,
        joins: @Sendable (_ leader: Member, _ queued: Member) -> Bool,
        _ body: ([Member]) async -> [Answer]
    ) async -> Answer {
        let turn = await withCheckedContinuation { (continuation: CheckedContinuation<Turn, Never>) in
            let action = boxes.withLock { boxes in
                boxes[key, default: MailboxStateMachine()].acquire(Waiter(member: member, continuation: continuation))
            }
            if case .run = action { continuation.resume(returning: .lead) }
        }
        if case .answered(let answer) = turn { return answer }
        let mates =
            maxBatch > 1 ? boxes.withLock { $0[key]!.takeQueued(max: maxBatch - 1) { joins(member, $0.member) } } : []
        let answers = await body([member] + mates.map(\.member))
        precondition(answers.count == mates.count + 1, "a batch of \(mates.count + 1) got \(answers.count) answers")
        for (mate, answer) in zip(mates, answers.dropFirst()) { mate.continuation.resume(returning: .answered(answer)) }
        release(key)
        return answers[0]
    }

    /// How many commands wait behind the running ones, across all entities.
    var queuedCount: Int { boxes.withLock { $0.values.reduce(0) { $0 + $1.queued } } }

    private func release(_ key: EntityKey) {
        let action = boxes.withLock { boxes -> MailboxStateMachine<Waiter>.ReleaseAction in
            let action = boxes[key]!.release()
            if case .idle = action { boxes[key] = nil }
            return action
        }
        if case .resume(let next) = action { next.continuation.resume(returning: .lead) }
    }
}
