//! Reading a response body up to a size cap.

use reqwest::Response;

use crate::error::chain;

/// Reads a body chunk by chunk, refusing it once it passes `cap` bytes (a
/// hostile or broken server cannot make us buffer without bound); a
/// declared `Content-Length` over `cap` is refused before reading.
pub(crate) async fn read_capped(mut resp: Response, cap: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Err(format!("response larger than {cap} bytes"));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e))? {
        if buf.len() + chunk.len() > cap {
            return Err(format!("response larger than {cap} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
