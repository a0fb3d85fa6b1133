// A first-in, first-out queue over an array with a moving head, for the connection pool's waiters, the entity
// mailboxes and the group commit lanes: a pop is O(1), and the served prefix is dropped once it is most of the
// array, so a queue that never runs empty under steady load does not grow without bound.

public struct FIFO<Element> {
    private var items: [Element] = []
    private var head = 0

    public init() {}

    public var count: Int { items.count - head }
    public var isEmpty: Bool { head == items.count }
    public var first: Element? { head < items.count ? items[head] : nil }
    /// Elements held in storage, served ones not yet dropped included (for tests).
    public var storedCount: Int { items.count }

    public mutating func append(_ element: Element) { items.append(element) }

    public mutating func popFirst() -> Element? {
        guard head < items.count else { return nil }
        let element = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 64, head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return element
    }

    /// Puts `elements` back at the front, in their order (ones taken out and not used after all).
    public mutating func prepend(_ elements: [Element]) {
        guard !elements.isEmpty else { return }
        items.replaceSubrange(0..<head, with: elements)
        head = 0
    }

    /// Empties the queue and gives its memory back; returns what it held, in order.
    @discardableResult
    public mutating func removeAll() -> [Element] {
        let remaining = Array(items[head...])
        items = []
        head = 0
        return remaining
    }
}

extension FIFO: Sendable where Element: Sendable {}
