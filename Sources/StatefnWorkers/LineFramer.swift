// Newline framing for worker pipes, parsed incrementally with a hard cap (Redis networking.c in spirit): a worker
// cannot make the gateway buffer more than `limit` bytes of one line.
import Glibc

/// Splits a byte stream into lines. A line over `limit` bytes comes out cut to `limit` and marked truncated, and
/// the rest of it, up to the next newline, is dropped.
struct LineFramer {
    enum Next: Equatable {
        case line([UInt8], truncated: Bool)
        case needMore
    }

    let limit: Int
    private var buffer: [UInt8] = []
    /// Where the next line starts in `buffer`; consumed bytes are dropped in batches, not one line at a time.
    private var start = 0
    /// Bytes from `start` up to here hold no newline.
    private var scanned = 0
    private var discarding = false

    init(limit: Int) { self.limit = limit }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
            scanned = 0
        } else if start > 64 * 1024 && start * 2 > buffer.count {
            buffer.removeFirst(start)
            scanned -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    mutating func next() -> Next {
        while true {
            if let newline = newlineIndex(from: scanned) {
                let wasDiscarding = discarding
                let truncated = newline - start > limit
                let line = Array(buffer[start..<(truncated ? start + limit : newline)])
                start = newline + 1
                scanned = start
                discarding = false
                if wasDiscarding { continue }
                return .line(line, truncated: truncated)
            }
            scanned = buffer.count
            if discarding {
                start = buffer.count
                return .needMore
            }
            guard buffer.count - start > limit else { return .needMore }
            let line = Array(buffer[start..<start + limit])
            start = buffer.count
            scanned = start
            discarding = true
            return .line(line, truncated: true)
        }
    }

    /// The first newline at or after `index`, found with memchr(3): a flooding worker pushes hundreds of
    /// megabytes through here, and a byte-by-byte scan would hold the I/O thread that long.
    private func newlineIndex(from index: Int) -> Int? {
        guard index < buffer.count else { return nil }
        return buffer.withUnsafeBytes { bytes in
            guard let found = memchr(bytes.baseAddress! + index, 0x0A, bytes.count - index) else { return nil }
            return bytes.baseAddress!.distance(to: UnsafeRawPointer(found))
        }
    }

    /// At end of file: what is left of an unterminated last line, if anything.
    mutating func remainder() -> [UInt8]? {
        defer {
            buffer.removeAll()
            start = 0
            scanned = 0
        }
        guard !discarding, start < buffer.count else { return nil }
        return Array(buffer[start...])
    }
}
