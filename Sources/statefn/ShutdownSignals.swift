// Turns SIGTERM and SIGINT into one awaited event. The default actions are disabled first, so the process stays
// up to drain; a second signal during the drain is ignored (the grace period bounds it).
import Dispatch

#if canImport(Glibc)
    import Glibc
#endif

final class ShutdownSignals {
    // Kept alive for as long as we listen; cancelled implicitly when released at exit.
    private let sources: [any DispatchSourceSignal]
    private let stream: AsyncStream<Int32>

    init() {
        signal(SIGPIPE, SIG_IGN)  // a worker that exits mid-write must not kill the gateway
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        self.stream = stream
        sources = [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(number) }
            source.resume()
            return source
        }
    }

    /// The first signal's name.
    func wait() async -> String {
        for await number in stream {
            return number == SIGTERM ? "SIGTERM" : "SIGINT"
        }
        return "none"
    }
}
