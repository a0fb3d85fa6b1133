// Connection strings are checked by libpq up front, and a rejected one never echoes a password back.
import Testing

import StatefnPostgres

@Suite(.timeLimit(.minutes(1))) struct PostgresConfigTests {
    @Test(arguments: [
        "postgres://statefn:s3cret@db.example:5432/app?sslmode=disable&connect_timeout=3",
        "postgresql://localhost/app",
        "postgresql:///app?host=/var/run/postgresql",
        "host=/tmp user=statefn dbname=postgres",
        "host='/path with spaces' port=5432 password='it\\'s' application_name=x",
        "",
    ])
    func acceptsURLsAndKeyValueStrings(_ conninfo: String) throws {
        #expect(try PostgresConfig(conninfo).conninfo == conninfo)
    }

    @Test(arguments: [
        "password=s3cret bogus",
        "password=s3cret nosuchoption=1",
        "postgres://statefn:s3cret@host/db?nosuchparam=1",
        "postgres://statefn:s3cret@[::1/db",
        "host='s3cret",
    ])
    func rejectsInvalidStringsWithoutEchoingThem(_ conninfo: String) {
        #expect {
            try PostgresConfig(conninfo)
        } throws: { error in
            guard let error = error as? PostgresError else { return false }
            return error.code == .invalidConfiguration && !error.logDescription.contains("s3cret")
                && !error.logDescription.contains("bogus") && !error.description.contains("s3cret")
        }
    }

    @Test func aRejectedOptionNameIsStillNamedInTheDetail() {
        #expect {
            try PostgresConfig("password=s3cret hots=localhost")
        } throws: { error in
            (error as? PostgresError)?.detail.contains("connection option") == true
        }
    }
}
