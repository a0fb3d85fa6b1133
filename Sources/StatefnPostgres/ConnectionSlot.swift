// One pool connection and the serial queue that owns it: libpq blocks, so it runs here, never on Swift's
// cooperative pool. The connection opens on first use and is replaced after it breaks.
import Dispatch
import Logging

final class ConnectionSlot: @unchecked Sendable {  // `connection` is only touched on `queue`, a serial queue.
    let queue: DispatchQueue
    private let config: PostgresConfig
    private let logger: Logger
    private var connection: PostgresConnection?

    init(index: Int, config: PostgresConfig, logger: Logger) {
        queue = DispatchQueue(label: "statefn.postgres.connection.\(index)")
        self.config = config
        var logger = logger
        logger[metadataKey: "db_connection"] = "\(index)"
        self.logger = logger
    }

    /// Runs `body` on this slot's connection, opening it if needed. Call on `queue` only.
    func run<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        let connection = try self.connection ?? open()
        defer {
            if !connection.resetForReuse() {
                logger.info("dropping a broken database connection; the next use reconnects")
                close()
            }
        }
        return try body(connection)
    }

    /// Call on `queue` only.
    func close() {
        connection?.close()
        connection = nil
    }

    private func open() throws(PostgresError) -> PostgresConnection {
        do {
            let opened = try PostgresConnection(config: config)
            logger.debug("opened a database connection")
            connection = opened
            return opened
        } catch {
            logger.warning("cannot connect to the database", metadata: ["error": "\(error.logDescription)"])
            throw error
        }
    }
}
