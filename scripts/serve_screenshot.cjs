// Screenshot of the page `medvlp serve` ships, after uploading an image through its file input,
// in headless Debian Chromium driven by playwright-core (installed outside the repo):
//
//   npm install --prefix /tmp/pw playwright-core@1     # once; apt-get install chromium
//   NODE_PATH=/tmp/pw/node_modules node scripts/serve_screenshot.cjs URL IMAGE OUT.png
//
// URL is a running server (e.g. http://127.0.0.1:8080), IMAGE a PNG/JPEG/DICOM.
const { chromium } = require("playwright-core");

(async () => {

const [url, image, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: serve_screenshot.cjs URL IMAGE OUT.png");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 760 } });
const errors = [];
page.on("pageerror", (e) => errors.push(e.message));
await page.goto(url);
await page.waitForFunction(() => document.querySelectorAll("#prompts option").length > 0);
await page.setInputFiles("#file", image);
await page.waitForSelector("#scores .row", { timeout: 30000 });
await page.waitForSelector("#hits .hit", { timeout: 30000 });
await page.screenshot({ path: out, fullPage: true });
const scores = await page.$$eval("#scores .row", (rows) => rows.map((r) => r.innerText.replace(/\s+/g, " ")));
const hits = await page.$$eval("#hits .hit", (h) => h.length);
console.log(JSON.stringify({ screenshot: out, scores, hits, page_errors: errors }));
await browser.close();
if (errors.length) process.exit(1);
})();
