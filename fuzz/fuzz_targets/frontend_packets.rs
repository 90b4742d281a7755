//! Arbitrary bytes from a client, through the frontend's packet handling: framing with the
//! max_allowed_packet limit, the SSL request and handshake response parsers, statement
//! classification, and the response scanner in every mode (which also reads what a backend
//! sends). Nothing may panic, loop forever, or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::sql::classify;
use tandem::wire::handshake::{ssl_request, HandshakeResponse};
use tandem::wire::scanner::{ResponseKind, ResponseScanner};
use tandem::wire::PacketIo;

const LIMIT: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::io::join(data, tokio::io::sink());
        let mut io = PacketIo::new(stream);
        let mut first = true;
        while let Ok(Some(p)) = io.read_packet(LIMIT).await {
            assert!(p.payload.len() <= LIMIT);
            if first {
                let _ = ssl_request(&p.payload);
                let _ = HandshakeResponse::parse(&p.payload);
                first = false;
            } else if let Some((_, sql)) = p.payload.split_first() {
                let _ = classify(sql);
            }
        }
    });
    for kind in [
        ResponseKind::Query,
        ResponseKind::Execute,
        ResponseKind::Prepare,
        ResponseKind::FieldList,
        ResponseKind::Fetch,
        ResponseKind::Single,
    ] {
        for deprecate_eof in [false, true] {
            let mut s = ResponseScanner::new(kind, deprecate_eof);
            // Feed in two uneven pieces to exercise resumption across reads.
            let cut = data.len() / 3;
            if s.feed(&data[..cut]).is_ok() {
                let _ = s.feed(&data[cut..]);
            }
        }
    }
});
