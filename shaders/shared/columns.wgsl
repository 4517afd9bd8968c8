// Column sums of squares over a stack of `count` tensors viewed as rows x cols and stored as one
// [count * rows, cols] array (DASGO's column statistics, REG's q). Stacked column c = z * cols + j
// is column j of tensor z. Where a stack has few columns, the sums split into `bands` of
// `band_rows` rows (src/optim/dasgo.rs column_bands) so that bands * count * cols invocations (a
// quarter of that for vec4 columns) share them; a second pass adds the bands in order. The importer declares `g: array<f32>` (the stacked
// gradient) and `colpart: array<f32>` ([bands, count * cols], each band's sums; a stub with one band),
// and the same two as `g4`, `colpart4`: array<vec4<f32>> for the vec4 versions (cols % 4 == 0: an
// invocation sums four neighbouring columns, each in the same order as the scalar version).
// CPU twin: src/reference/dasgo.rs column_sums.

struct Columns {
    rows: u32,      // of one tensor
    cols: u32,
    count: u32,     // tensors in the stack
    bands: u32,
    band_rows: u32, // the last band may hold fewer
}

// The sum of squares of stacked column c over its tensor's rows [first, last), in row order.
fn column_sum(cs: Columns, c: u32, first: u32, last: u32) -> f32 {
    let z = c / cs.cols;
    let base = z * cs.rows * cs.cols + (c - z * cs.cols);
    var sum = 0.0;
    for (var i = first; i < last; i = i + 1u) {
        let v = g[base + i * cs.cols];
        sum = sum + v * v;
    }
    return sum;
}

// Invocation t of the band pass: band t / (count * cols), stacked column t mod (count * cols).
// Neighbouring invocations read neighbouring columns of the same rows.
fn band_column_sum(cs: Columns, t: u32) -> f32 {
    let width = cs.count * cs.cols;
    let band = t / width;
    let first = band * cs.band_rows;
    return column_sum(cs, t - band * width, first, min(first + cs.band_rows, cs.rows));
}

// Stacked column c's whole sum: its bands' sums in band order, or the column itself with one band.
fn column_total(cs: Columns, c: u32) -> f32 {
    if (cs.bands <= 1u) {
        return column_sum(cs, c, 0u, cs.rows);
    }
    var sum = 0.0;
    for (var b = 0u; b < cs.bands; b = b + 1u) { sum = sum + colpart[b * cs.count * cs.cols + c]; }
    return sum;
}

// column_sum over stacked vec4 column c4 = z * cols / 4 + j4: columns 4 j4 .. 4 j4 + 3 of tensor z.
fn column_sum4(cs: Columns, c4: u32, first: u32, last: u32) -> vec4<f32> {
    let width = cs.cols / 4u;
    let z = c4 / width;
    let base = z * cs.rows * width + (c4 - z * width);
    var sum = vec4<f32>(0.0);
    for (var i = first; i < last; i = i + 1u) {
        let v = g4[base + i * width];
        sum = sum + v * v;
    }
    return sum;
}

// band_column_sum over vec4 columns: invocation t = band * (count * cols / 4) + c4.
fn band_column_sum4(cs: Columns, t: u32) -> vec4<f32> {
    let width = cs.count * cs.cols / 4u;
    let band = t / width;
    let first = band * cs.band_rows;
    return column_sum4(cs, t - band * width, first, min(first + cs.band_rows, cs.rows));
}

// column_total over vec4 column c4.
fn column_total4(cs: Columns, c4: u32) -> vec4<f32> {
    if (cs.bands <= 1u) {
        return column_sum4(cs, c4, 0u, cs.rows);
    }
    var sum = vec4<f32>(0.0);
    for (var b = 0u; b < cs.bands; b = b + 1u) { sum = sum + colpart4[b * cs.count * cs.cols / 4u + c4]; }
    return sum;
}
