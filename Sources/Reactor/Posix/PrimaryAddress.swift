#if canImport(Glibc)
import Glibc
#endif
import SwitchyardCore

/// The machine's own IPv4 addresses, as the system reports them (nothing is sent).
public enum LocalAddresses {
    /// The primary IPv4 address: the address of the interface the default route leaves by (the route with the
    /// lowest metric in `/proc/net/route`), else the first non-loopback IPv4 address of an interface that is up,
    /// else nil (a machine with loopback only). A number in reading order, as `IPv4Endpoint.ip`.
    public static func primaryIPv4() -> UInt32? {
        let addresses = interfaceIPv4()
        if let interface = defaultRouteInterface(routeTable: readRouteTable()),
           let match = addresses.first(where: { $0.interface == interface }) {
            return match.ip
        }
        return addresses.first { $0.ip >> 24 != 127 }?.ip
    }

    /// The interface of the default route in the text of `/proc/net/route` (columns Iface, Destination, Gateway,
    /// Flags, RefCnt, Use, Metric, Mask, ... in hex): the up route (flag 0x1) to 0.0.0.0/0 with the lowest metric.
    public static func defaultRouteInterface(routeTable text: String) -> String? {
        var best: (interface: String, metric: Int)?
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            guard fields.count >= 8, fields[1] == "00000000", fields[7] == "00000000",
                  let flags = Int(fields[3], radix: 16), flags & 0x1 != 0,
                  let metric = Int(fields[6]) else { continue }
            if best == nil || metric < best!.metric { best = (String(fields[0]), metric) }
        }
        return best?.interface
    }

    private static func readRouteTable() -> String {
        guard let file = fopen("/proc/net/route", "r") else { return "" }
        defer { fclose(file) }
        var text = ""
        var buffer = [CChar](repeating: 0, count: 512)
        while fgets(&buffer, Int32(buffer.count), file) != nil {
            text += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return text
    }

    /// The IPv4 addresses of the interfaces that are up, in the system's order.
    public static func interfaceIPv4() -> [(interface: String, ip: UInt32)] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var out: [(interface: String, ip: UInt32)] = []
        var next = list
        while let entry = next {
            defer { next = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET),
                  entry.pointee.ifa_flags & UInt32(IFF_UP) != 0 else { continue }
            let ip = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                UInt32(bigEndian: $0.pointee.sin_addr.s_addr)
            }
            out.append((String(cString: entry.pointee.ifa_name), ip))
        }
        return out
    }
}
