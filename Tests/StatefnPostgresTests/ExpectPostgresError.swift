// Shared helpers for the Postgres tests; the cluster itself comes from StatefnTestSupport.TestDatabase.
import StatefnPostgres

/// Expects `body` to throw a PostgresError and returns it.
func expectPostgresError(_ body: () async throws -> Void) async -> PostgresError? {
    do {
        try await body()
        return nil
    } catch let error as PostgresError {
        return error
    } catch {
        return nil
    }
}
