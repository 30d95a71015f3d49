//! image/png: a chart's SVG rasterised (resvg). JupyterLab does not show `image/svg+xml` or inline SVG in an
//! untrusted notebook (one opened from a file, not run here): its sanitiser strips SVG from HTML and it renders
//! only "safe" types, among them PNG. So the kernel sends a chart as SVG and PNG; the PNG is what survives.
//! Text is drawn with the system's fonts (found once per process); without any, the lines and axes still are.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use resvg::{tiny_skia, usvg};

/// Sans-serif families to draw the charts' text with, the first one installed.
const SANS: &[&str] = &["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica", "FreeSans"];

/// Pixels per SVG unit: twice the size, so the image stays sharp on high-density screens.
const SCALE: f32 = 2.0;

fn fonts() -> Arc<usvg::fontdb::Database> {
    static DB: OnceLock<Arc<usvg::fontdb::Database>> = OnceLock::new();
    DB.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_system_fonts();
        // fontdb maps `sans-serif` to Arial, which Linux machines rarely have: take the first sans face there is.
        let have = |name: &str| db.faces().any(|f| f.families.iter().any(|(n, _)| n == name));
        if let Some(name) = SANS.iter().find(|n| have(n)) {
            db.set_sans_serif_family(*name);
        }
        Arc::new(db)
    })
    .clone()
}

/// The PNG bytes of `svg`, or `None` if it cannot be parsed (never for the charts `svg.rs` writes).
pub fn png(svg: &str) -> Option<Vec<u8>> {
    let opt = usvg::Options { fontdb: fonts(), ..usvg::Options::default() };
    let tree = usvg::Tree::from_str(svg, &opt).ok()?;
    let size = tree.size();
    let (w, h) = ((size.width() * SCALE).ceil() as u32, (size.height() * SCALE).ceil() as u32);
    let mut pixmap = tiny_skia::Pixmap::new(w.max(1), h.max(1))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(&tree, tiny_skia::Transform::from_scale(SCALE, SCALE), &mut pixmap.as_mut());
    pixmap.encode_png().ok()
}

/// [`png`] in base64, as Jupyter's `image/png` carries it.
pub fn png_base64(svg: &str) -> Option<String> {
    png(svg).map(|b| base64::engine::general_purpose::STANDARD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{Chart, Series};

    #[test]
    fn a_chart_rasterises_at_twice_its_size_with_drawn_pixels() {
        let c = Chart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), series: vec![Series { name: "s".into(), points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)] }] };
        let svg = super::super::svg::chart(&c);
        let bytes = png(&svg).expect("png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = tiny_skia::Pixmap::decode_png(&bytes).unwrap();
        let tree = usvg::Tree::from_str(&svg, &usvg::Options::default()).unwrap();
        assert_eq!(img.width(), (tree.size().width() * SCALE).ceil() as u32);
        // Not a blank image: some pixels are far from white (the axes and the line).
        let dark = img.pixels().iter().filter(|p| p.red() < 128 || p.green() < 128 || p.blue() < 128).count();
        assert!(dark > 100, "{dark} dark pixels");
        assert!(png("<not svg").is_none());
    }
}
