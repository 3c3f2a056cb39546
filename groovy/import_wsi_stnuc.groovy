/*
 * Import wsi-stnuc nucleus results into a QuPath project (QuPath 0.5, 0.6, 0.7).
 *
 * `wsi-stnuc infer ... --out RESULTS_DIR` writes, per slide, NAME.geojson (or NAME.geojson.zip)
 * and NAME.summary.json; the summary records the slide's resolved path ("slide_path"), its
 * class table ("classes") and the model tag ("model_tag"). This script matches each image of
 * the project to a result by that path (the image's file, symbolic links resolved), so two
 * slides with the same file name in different folders (a/slide.svs, b/slide.svs -> slide,
 * slide-2) each get their own result. Where no recorded path matches (a project opened on
 * another machine), an image takes the result whose slide has the same file name, but only
 * when exactly one result has it; otherwise it is skipped with a message, never guessed.
 *
 * Objects carry the measurement "wsi_stnuc_model_id" (a number naming the model); before
 * adding, earlier detections with the same model id are removed, so rerunning the script (or
 * importing a rerun of the same model) replaces instead of duplicating, while results of other
 * models stay. Class colours come from NAME.summary.json.
 *
 * How to run
 *  - GUI, all images: open the project, Automate > Script editor, open this file, set
 *    RESULTS_DIR below (or leave it to use PROJECT_DIR/wsi_stnuc), then Run > Run for project
 *    (choose the images). QuPath saves each image's data after the script.
 *  - GUI, without an open image: plain Run imports into every image of the project and saves.
 *  - Headless: QuPath script -p /path/project.qpproj --save -a /path/RESULTS_DIR import_wsi_stnuc.groovy
 *    (on Windows use "QuPath-x.y.z (console).exe"; --save writes the changes to the project).
 *
 * The import logic (class WsiStnucImport) uses qupath-core only, and JSON goes through the Gson
 * that QuPath ships (GsonTools): QuPath bundles no groovy-json. The GUI scripting class is looked
 * up when the script runs, so the file also compiles and runs where only qupath-core exists.
 */

import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.PathObjectHierarchy

// ---- settings --------------------------------------------------------------------------
def RESULTS_DIR = null                     // null: first script argument, else PROJECT_DIR/wsi_stnuc
// -----------------------------------------------------------------------------------------

/** Finds the result of an image and imports it into a hierarchy (qupath-core only). */
class WsiStnucImport {
    static final String MODEL_TAG = 'wsi_stnuc_model_id'   // measurement written by wsi_stnuc.export.qupath
    static final List<String> RESULT_SUFFIXES = ['.geojson.zip', '.geojson']
    static final String SUMMARY_SUFFIX = '.summary.json'

    /** The summaries of every finished slide in the folder, each with its "summaryFile". */
    static List<Map> results(File dir) {
        def files = (dir.listFiles() ?: new File[0]).findAll { it.name.endsWith(SUMMARY_SUFFIX) }
        return files.sort { it.name }.collect { File f ->
            Map info = f.withReader('UTF-8') { r -> GsonTools.getInstance().fromJson(r, Map) }
            info.summaryFile = f
            return info
        }
    }

    /** A path in a form two spellings of the same file agree on. */
    static String canonical(String path) {
        try {
            return new File(path).canonicalPath
        } catch (IOException ignored) {
            return new File(path).absoluteFile.toPath().normalize().toString()
        }
    }

    /** The local files of an image's URIs. */
    static List<String> filesOf(Collection<URI> uris) {
        return uris.findAll { it != null && it.scheme == 'file' }.collect { new File(it).path }
    }

    /** The result recorded for an image stored in one of `imagePaths`, or a String saying why none. */
    static Object match(List<String> imagePaths, List<Map> results) {
        def wanted = imagePaths.collect { canonical(it) } as Set
        def recorded = results.findAll { it.slide_path != null }
        def byPath = recorded.findAll { wanted.contains(canonical(it.slide_path as String)) }
        if (byPath.size() == 1)
            return byPath[0]
        if (byPath.size() > 1)
            return "${byPath.size()} results record this slide (${byPath*.name.join(', ')}); keep one"
        def names = imagePaths.collect { new File(it).name } as Set
        def byName = recorded.findAll { names.contains(new File(it.slide_path as String).name) }
        if (byName.size() == 1)
            return byName[0]
        if (byName.size() > 1)
            return "no result records this path and ${byName.size()} slides share its file name " +
                   "(${byName*.name.join(', ')}): not guessing"
        return 'no result records this slide'
    }

    static File resultFile(File dir, Map result) {
        return RESULT_SUFFIXES.collect { new File(dir, (result.name as String) + it) }.find { it.isFile() }
    }

    /** Give the result's classes their colours (QuPath keeps one PathClass per name). */
    static void applyColours(Map result) {
        result.classes.each { c ->
            def rgb = c.color as List
            PathClass.fromString(c.name as String).setColor(
                    ColorTools.packRGB(rgb[0] as int, rgb[1] as int, rgb[2] as int))
        }
    }

    static Long tagOf(PathObject p) {
        double v = p.getMeasurementList().get(MODEL_TAG)
        return Double.isNaN(v) ? null : Math.round(v)
    }

    /** Remove earlier detections of the same model(s), add the file's objects: [added, removed]. */
    static List<Integer> importInto(PathObjectHierarchy hierarchy, File file) {
        List<PathObject> objects = PathIO.readObjects(file.toPath())
        def tags = objects.collect { tagOf(it) }.findAll { it != null } as Set
        def old = hierarchy.getDetectionObjects().findAll { tags.contains(tagOf(it)) }
        if (!old.isEmpty())
            hierarchy.removeObjects(old, true)
        hierarchy.addObjects(objects)
        return [objects.size(), old.size()]
    }

    /** Import the result of one image; returns what happened, one line. */
    static String run(PathObjectHierarchy hierarchy, String imageName, List<String> imagePaths,
                      File dir, List<Map> results) {
        def found = match(imagePaths, results)
        if (!(found instanceof Map))
            return "wsi-stnuc import: ${imageName}: skipped, ${found}"
        Map result = found as Map
        File file = resultFile(dir, result)
        if (file == null)
            return "wsi-stnuc import: ${imageName}: skipped, ${result.name}.geojson[.zip] missing in ${dir}"
        applyColours(result)
        def counts = importInto(hierarchy, file)
        return "wsi-stnuc import: ${imageName}: ${counts[0]} objects from ${file.name} (replaced ${counts[1]})"
    }
}

// ---- run in QuPath ----------------------------------------------------------------------
// QPEx is QuPath's GUI scripting class: looked up at run time so the logic above stays testable
def qp = this.class.classLoader.loadClass('qupath.lib.gui.scripting.QPEx')
def project = qp.getProject()
if (project == null) {
    println 'wsi-stnuc import: open a project first'
    return
}
File resultsDir
if (RESULTS_DIR != null)
    resultsDir = new File(RESULTS_DIR as String)
else if (binding.hasVariable('args') && args != null && args.size() > 0)
    resultsDir = new File(args[0] as String)
else
    resultsDir = new File(qp.buildFilePath(qp.PROJECT_BASE_DIR, 'wsi_stnuc'))
if (!resultsDir.isDirectory()) {
    println "wsi-stnuc import: results folder not found: ${resultsDir}"
    return
}
def results = WsiStnucImport.results(resultsDir)
def current = qp.getCurrentImageData()
if (current != null) {
    // "Run for project" (GUI) and `QuPath script -p` call the script once per image
    def entry = qp.getProjectEntry()
    def name = entry != null ? entry.getImageName() : current.getServer().getMetadata().getName()
    def uris = entry != null ? entry.getURIs() : current.getServer().getURIs()
    println WsiStnucImport.run(current.getHierarchy(), name, WsiStnucImport.filesOf(uris), resultsDir, results)
} else {
    // no image open: walk the whole project, saving each image
    for (entry in project.getImageList()) {
        def imageData = entry.readImageData()
        def line = WsiStnucImport.run(imageData.getHierarchy(), entry.getImageName(),
                                      WsiStnucImport.filesOf(entry.getURIs()), resultsDir, results)
        println line
        if (!line.contains(': skipped, '))
            entry.saveImageData(imageData)
    }
}
