import Crypto
import _CryptoExtras

/// Salted password hashes with PBKDF2-HMAC-SHA256 (swift-crypto, BoringSSL underneath).
///
/// Slow on purpose (a few hundred milliseconds in debug builds): call it from a task, never on a reactor loop.
/// Safe to call from any thread.
public enum PasswordHasher {
    /// The fewest iterations accepted.
    public static let minimumIterations = 100_000
    /// Bytes of salt per user.
    public static let saltBytes = 16
    /// Bytes of derived key stored.
    public static let hashBytes = 32

    /// A fresh random salt.
    public static func makeSalt() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<saltBytes).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// The PBKDF2-SHA256 hash of `password` with `salt`.
    public static func hash(password: String, salt: [UInt8], iterations: Int) throws -> [UInt8] {
        let key = try KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: hashBytes,
            unsafeUncheckedRounds: max(minimumIterations, iterations))
        return key.withUnsafeBytes { Array($0) }
    }

    /// True when `password` hashes to `expected`; the comparison takes the same time wherever the bytes differ.
    public static func verify(password: String, salt: [UInt8], iterations: Int, expected: [UInt8]) -> Bool {
        guard let actual = try? hash(password: password, salt: salt, iterations: iterations) else { return false }
        return constantTimeEqual(actual, expected)
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    /// A random session token: 32 hex digits.
    public static func makeToken() -> String {
        var rng = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef")
        return String((0..<32).map { _ in digits[Int.random(in: 0..<16, using: &rng)] })
    }
}
